"""
Running under systemd (issue 15): the readiness messages a C{Type=notify}
unit waits for, sent to C{$NOTIFY_SOCKET} (the test plays systemd's side);
the unit files as C{systemd-analyze verify} sees them; and a gateway started
as root with C{twistd -u nobody -g nogroup}, whose reloads (SIGHUP) still
apply, read the admin token it may not read any more, and reopen or keep
the access log after a rotation.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DEADLINE, GatewayProcess, connect, listening_ports, wait_for

pytestmark = pytest.mark.usefixtures("tcp_path")

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "abcdefghijklmnop-0123"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """
    systemd's end of C{$NOTIFY_SOCKET}: a datagram socket the gateway's
    environment names.
    """
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(DEADLINE)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield receiver
    receiver.close()


def _message(receiver: socket.socket) -> dict[str, str]:
    """
    The next notification, as its C{NAME=value} lines.
    """
    data = receiver.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_readiness_reload_and_stop(notify_socket: socket.socket, tmp_path: Path) -> None:
    """
    READY=1 arrives once the front listens; a SIGHUP sends RELOADING=1 (with
    the monotonic time) and then READY=1; SIGTERM sends STOPPING=1 as the
    drain begins.
    """
    gateway = GatewayProcess(["--backend", "tcp:127.0.0.1:1"], tmp_path)
    gateway.process = subprocess.Popen(
        gateway.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        ready = _message(notify_socket)
        # Checked as the message arrives: it was sent after the bind.
        assert "127.0.0.1" in listening_ports(gateway.pid), gateway.log()
        assert ready["READY"] == "1"
        assert ready["STATUS"] == "1 fronts listening"
        gateway.process.send_signal(signal.SIGHUP)
        reloading = _message(notify_socket)
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert _message(notify_socket) == {"READY": "1", "STATUS": "reloaded"}
        gateway.process.send_signal(signal.SIGTERM)
        assert _message(notify_socket) == {"STOPPING": "1", "STATUS": "draining"}
        assert gateway.process.wait(timeout=DEADLINE) == 0
    finally:
        gateway.stop()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_unit_files_verify(tmp_path: Path) -> None:
    """
    C{systemd-analyze verify} finds nothing to say about the service and
    socket units (their ExecStart= program, which it checks exists, is made
    to point at this venv's twistd).
    """
    twistd = Path(GatewayProcess([], tmp_path).argv[0])
    for name in ("gateway.service", "gateway.socket"):
        text = (ROOT / "contrib" / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/gateway/bin/twistd", str(twistd)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "gateway.service")],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    # Lines about the host's own units (no systemd running here) are not ours.
    ours = [line for line in result.stderr.splitlines() if "gateway." in line]
    assert ours == [], result.stderr


def _shared_folder() -> Path:
    """
    A folder user nobody can reach (pytest's tmp_path is private to root).
    """
    folder = Path(tempfile.mkdtemp(prefix="gateway-drop-"))
    folder.chmod(0o755)
    return folder


def _http_get(port: int) -> bytes:
    """
    One HTTP request to the front, and its whole answer.
    """
    with connect(port) as sock:
        sock.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
@pytest.mark.parametrize("log_folder_writable", [True, False])
def test_reload_after_privilege_drop(tmp_path: Path, log_folder_writable: bool) -> None:
    """
    Started as root with C{-u nobody -g nogroup}: a SIGHUP applies a changed
    setting although the token file (root's, mode 0600) cannot be read any
    more, since it did not change; once it changes, the reload is refused
    with a line saying what ownership it needs.  After a rotation (the
    access log renamed, then SIGHUP), a folder nobody may write to gets a
    new file; one nobody may not write to keeps the renamed file, with one
    line saying why.
    """
    nobody = pwd.getpwnam("nobody")
    folder = _shared_folder()
    try:
        token = folder / "token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        config = folder / "gateway.toml"
        config.write_text("max-per-ip = 10\n")
        (folder / "site").mkdir()
        (folder / "site" / "index.html").write_text("hello")
        logs = folder / "log"
        logs.mkdir()
        if log_folder_writable:
            os.chown(logs, nobody.pw_uid, grp.getgrnam("nogroup").gr_gid)
        access = logs / "access.log"
        args = ["--config", str(config), "--backend", "tcp:127.0.0.1:1"]
        args += ["--admin", "tcp:0:interface=127.0.0.5", "--admin-token-file", str(token)]
        args += ["--access-log", str(access), "--http-root", str(folder / "site")]
        drop = ["-u", "nobody", "-g", "nogroup"]
        with GatewayProcess(args, tmp_path, twistd_args=drop) as gateway:
            wait_for(lambda: "set uid/gid" in gateway.log(), "the privilege drop")
            assert os.stat(f"/proc/{gateway.pid}").st_uid == nobody.pw_uid
            config.write_text("max-per-ip = 11\n")
            gateway.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            wait_for(lambda: "max-per-ip 10 -> 11" in gateway.log(), "the reload")
            assert "refused" not in gateway.log()

            access.rename(logs / "access.log.1")
            gateway.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            wait_for(lambda: gateway.log().count("reloaded") == 2, "the second reload")
            assert b"200 OK" in _http_get(gateway.port)
            if log_folder_writable:
                wait_for(lambda: access.exists() and b"GET" in access.read_bytes(), "a new log")
                assert access.stat().st_uid == nobody.pw_uid
                assert "cannot open the access log" not in gateway.log()
            else:
                renamed = logs / "access.log.1"
                wait_for(lambda: b"/index.html" in renamed.read_bytes(), "the old file")
                assert not access.exists()
                lines = [x for x in gateway.log().splitlines() if "cannot open the access" in x]
                assert len(lines) == 1, gateway.log()
                assert "as user nobody: Permission denied" in lines[0]
                assert f"make {logs} writable by nobody" in lines[0]

            token.write_text("another-token-0123456789\n")
            gateway.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            wait_for(lambda: "reload refused" in gateway.log(), "the refused reload")
            assert (
                f"cannot read {str(token)!r} as user nobody: it changed since it was read, "
                f"so make it readable by nobody (e.g. chgrp nogroup {token}; "
                f"chmod 0640 {token})" in gateway.log()
            )
    finally:
        shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="-u needs root")
def test_check_config_says_what_ownership_a_reload_needs(tmp_path: Path) -> None:
    """
    C{twistd -u nobody gateway --check-config} says, for each file a reload
    reads or reopens, whether user nobody may, and what it needs if not.
    """
    folder = _shared_folder()
    try:
        token = folder / "token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        (folder / "log").mkdir()
        argv = GatewayProcess([], tmp_path).argv[:1] + ["-u", "nobody", "-g", "nogroup"]
        argv += ["gateway", "--backend", "tcp:127.0.0.1:1", "--admin-token-file", str(token)]
        argv += ["--access-log", str(folder / "log" / "access.log"), "--check-config"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE, check=True)
        lines = result.stdout.splitlines()[1:]
        assert lines == [
            "after the privilege drop, a reload runs as user nobody (group nogroup):",
            f"  admin-token-file {token}: read at start only: a reload keeps its token until "
            "the file changes; make it readable by nobody to change the token with a reload",
            f"  access-log {folder}/log/access.log: opened at start only: after a rotation it "
            f"cannot be reopened (make {folder}/log writable by nobody, or use logrotate's "
            "copytruncate)",
        ]
    finally:
        shutil.rmtree(folder)
