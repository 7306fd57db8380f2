// The demo page's Hi-Lo client: a WebSocket session through the gateway's bridge.
//
// It opens ws(s)://<this page's host>/play offering the subprotocol "binary", so
// the gateway relays it, byte for byte, as a game session to a demo game server,
// just like `nc localhost 8080` (the server speaks first: the banner arrives
// without anything being sent).  Each line typed is sent as one binary message:
// its UTF-8 bytes and "\n".  What the server sends arrives as binary messages,
// cut wherever the network cut it, so the bytes go through one streaming
// TextDecoder (a character split between two messages is decoded once whole)
// and are split into lines here.  Text is only ever set with textContent, so
// nothing a player types can become markup on another player's page.
//
// No framework and nothing loaded from elsewhere; no inline script, so the page
// works under a Content-Security-Policy of default-src 'self'.
"use strict";

(function () {
  // Bounds, so that a long session or a server that never sends "\n" cannot
  // grow the page without end: lines kept, and characters shown in one line.
  const MAX_LINES = 1000;
  const MAX_LINE = 8192;

  const status = document.getElementById("play-status");
  const output = document.getElementById("play-output");
  const form = document.getElementById("play-form");
  const input = document.getElementById("play-line");
  const send = document.getElementById("play-send");
  const connect = document.getElementById("play-connect");
  const client = document.getElementById("play");
  const encoder = new TextEncoder();

  let socket = null;
  let opened = false; // whether `socket` ever got through
  let decoder = null;
  let pending = ""; // the last line, until its "\n" arrives
  let partial = null; // the element that shows `pending`

  function atBottom() {
    return output.scrollHeight - output.scrollTop - output.clientHeight < 4;
  }

  function addLine(text, className) {
    const follow = atBottom();
    const line = document.createElement("div");
    line.className = className;
    line.textContent = text;
    output.insertBefore(line, partial);
    while (output.childElementCount > MAX_LINES + 1) {
      output.removeChild(output.firstElementChild);
    }
    if (follow) output.scrollTop = output.scrollHeight;
  }

  function showPending() {
    if (partial === null) {
      partial = document.createElement("div");
      partial.className = "partial";
      output.appendChild(partial);
    }
    partial.textContent = pending;
  }

  // Add decoded text from the server: whole lines become lines of output; a
  // last line without its "\n" (a prompt) is shown as it is, and grows.
  function received(text) {
    const lines = (pending + text).split("\n");
    pending = lines.pop();
    for (const line of lines) {
      addLine(line.endsWith("\r") ? line.slice(0, -1) : line, "line");
    }
    while (pending.length > MAX_LINE) {
      addLine(pending.slice(0, MAX_LINE), "line");
      pending = pending.slice(MAX_LINE);
    }
    showPending();
  }

  function setState(state, detail) {
    status.textContent = detail ? state + " (" + detail + ")" : state;
    status.dataset.state = state;
    // A waiting player may type: the gateway keeps its lines for the game.
    const open = state === "connected" || state === "waiting";
    input.disabled = !open;
    send.disabled = !open;
    connect.hidden = state !== "disconnected";
  }

  function closed(event) {
    if (decoder !== null) {
      // Whatever was left: an incomplete character becomes U+FFFD.
      received(decoder.decode());
      if (pending) {
        addLine(pending, "line");
        pending = "";
        showPending();
      }
      decoder = null;
    }
    socket = null;
    if (opened) addLine("(disconnected)", "note");
    opened = false;
    // Keep the keyboard in the client if it was there (the input is disabled now).
    const focused = client.contains(document.activeElement);
    // 1006 is what a browser reports for "no WebSocket there" as well as for a
    // dropped connection: it gives a page no more detail than that.
    setState("disconnected", event.code === 1000 ? "" : "code " + event.code);
    if (focused) connect.focus();
  }

  // Connect; `byHand` when the player asked (the Connect button): only then
  // does the input take the focus, so that loading the page does not scroll
  // it down to the client or move a screen reader away from the top.
  function open(byHand) {
    if (socket !== null) return;
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(scheme + "//" + window.location.host + "/play", ["binary"]);
    } catch (error) {
      setState("disconnected", String(error.message || error));
      return;
    }
    ws.binaryType = "arraybuffer";
    socket = ws;
    decoder = new TextDecoder("utf-8");
    setState("connecting");
    ws.addEventListener("open", function () {
      if (socket !== ws) return;
      opened = true;
      setState("connected");
      if (byHand) input.focus();
    });
    ws.addEventListener("message", function (event) {
      if (socket !== ws) return;
      if (typeof event.data === "string") {
        // Under the "binary" subprotocol the game's bytes come as binary
        // messages; a text message is the gateway's own: its waiting room
        // telling this player its place while the game servers are full.
        addLine(event.data, "line queue");
        setState("waiting");
        return;
      }
      if (status.dataset.state === "waiting") setState("connected");
      received(decoder.decode(new Uint8Array(event.data), { stream: true }));
    });
    ws.addEventListener("close", function (event) {
      if (socket === ws) closed(event);
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (socket === null || socket.readyState !== WebSocket.OPEN) return;
    const line = input.value;
    socket.send(encoder.encode(line + "\n"));
    addLine("> " + line, "line sent");
    input.value = "";
    input.focus();
  });

  connect.addEventListener("click", function () {
    open(true);
  });
  open(false);
})();
