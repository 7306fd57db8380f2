"""
A headless Chromium driven through the Chrome DevTools Protocol, for browser
tests that interact with a page (type, press Enter, read the DOM as it
changes) rather than print it once (C{--dump-dom}, as the dashboard test does).

The protocol runs over a pipe (C{--remote-debugging-pipe}): the browser reads
commands from its descriptor 3 and writes replies and events to its descriptor
4, each a JSON object ended by a NUL byte.  A pipe needs no port and no
WebSocket client library.  Commands go to one page through a flat session
(C{Target.attachToTarget} with C{flatten}), so events of other targets are
simply skipped.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support import DEADLINE, HEADLESS_CHROMIUM, wait_for

__all__ = ["Browser", "CdpError"]


class CdpError(Exception):
    """
    The browser answered a command with an error, or stopped answering.
    """


def _above_four(descriptor: int) -> int:
    """
    Move a descriptor to number 10 or above (so neither 3 nor 4).

    @return: the new descriptor; the old one is closed.
    """
    moved = fcntl.fcntl(descriptor, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(descriptor)
    return moved


class Browser:
    """
    A headless Chromium with one page open, as a context manager.

    On exit the browser is asked to close, then its process group (it was
    started in a session of its own, with its renderers) is killed by its ID.
    """

    def __init__(self, executable: str, profile: Path, *flags: str) -> None:
        """
        @param executable: the chromium binary.
        @param profile: an empty folder for its user data.
        @param flags: more command-line flags for the browser.
        """
        self._argv = [
            executable,
            *HEADLESS_CHROMIUM,
            *flags,
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self._process: subprocess.Popen[bytes] | None = None
        self._commands = -1
        self._replies = -1
        self._buffer = b""
        self._next_id = 0
        self._session = ""

    def __enter__(self) -> Browser:
        to_browser, commands = os.pipe()
        replies, from_browser = os.pipe()
        # The browser wants the pipe on descriptors 3 and 4 exactly; subprocess
        # can only keep descriptors at their numbers, so a small Python moves
        # them and becomes the browser (no preexec_fn: it is unsafe with the
        # test backends' threads; no sh: dash takes no descriptor above 9).
        # The pipe's ends are first put above 4, so that no move overwrites
        # the other.
        to_browser, from_browser = _above_four(to_browser), _above_four(from_browser)
        trampoline = (
            "import os, sys\n"
            f"os.dup2({to_browser}, 3)\n"
            f"os.dup2({from_browser}, 4)\n"
            f"os.close({to_browser})\n"
            f"os.close({from_browser})\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n"
        )
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", trampoline, *self._argv],
                pass_fds=(to_browser, from_browser),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(to_browser)
            os.close(from_browser)
        self._commands, self._replies = commands, replies
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self._process
        assert process is not None
        try:
            if process.poll() is None:
                self._send("Browser.close", {}, session="")
                process.wait(timeout=DEADLINE)
        except (CdpError, OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            os.close(self._commands)
            os.close(self._replies)

    def _send(self, method: str, params: dict[str, Any], session: str) -> int:
        """
        Write one command; return its id.
        """
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._commands, data) :]
        return self._next_id

    def _message(self, deadline: float) -> dict[str, Any]:
        """
        Read the browser's next message (a reply or an event).
        """
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise CdpError("the browser did not answer in time")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise CdpError("the browser closed its end of the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """
        Run one command on the page (or on the browser, before L{open}).

        @return: the command's result.
        @raise CdpError: the browser answered with an error.
        """
        ident = self._send(method, params or {}, self._session)
        deadline = time.monotonic() + DEADLINE
        while True:
            message = self._message(deadline)
            if message.get("id") != ident:
                continue  # an event, which these tests read from the DOM instead
            if "error" in message:
                raise CdpError(f"{method}: {message['error']}")
            result: dict[str, Any] = message["result"]
            return result

    def open(self, url: str) -> None:
        """
        Open C{url} in a new page, wait until it has loaded (its deferred
        scripts have run), and send later commands to that page.

        @raise CdpError: the page could not be loaded.
        """
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]
        # Page.navigate answers once the new document is committed, so what
        # is evaluated from then on is evaluated in it.
        navigated = self.call("Page.navigate", {"url": url})
        if "errorText" in navigated:
            raise CdpError(f"{url}: {navigated['errorText']}")
        wait_for(lambda: self.evaluate("document.readyState") == "complete", f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        """
        Evaluate a JavaScript expression in the page.

        @return: its value, as JSON makes it.
        @raise CdpError: it threw.
        """
        reply = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def type_line(self, selector: str, text: str) -> None:
        """
        Focus an input and type C{text} into it, then press Enter, as a person
        would: the text arrives as typed input and Enter as key events.
        """
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", {"text": text})
        enter = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", "text": "\r", **enter})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", **enter})
