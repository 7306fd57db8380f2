"""
The command line as data: an argv in, a whole L{GatewayConfig} out, and every
bad setting refused with a message that names it.  Also: Twisted's plugin
discovery finds the plugin.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactor
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError

from gateway.config import (
    DEMO_MAX_SESSIONS,
    DEMO_QUEUE_MESSAGE,
    DEMO_QUEUE_SIZE,
    BackendSpec,
    GatewayConfig,
)
from gateway.options import GatewayOptions, Options


def parse(argv: list[str]) -> GatewayConfig:
    """
    Parse C{argv} as the plugin would, against a memory reactor.
    """
    options = GatewayOptions(reactor=MemoryReactor())
    options.parseOptions(argv)
    return options.config


def test_plugin_is_discovered() -> None:
    """
    Twisted's plugin discovery finds exactly one "gateway" service maker, and
    it points at the options module.
    """
    makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "gateway"]
    assert len(makers) == 1
    assert makers[0].options is Options


def test_minimal_command_line() -> None:
    """
    One backend and nothing else gives the documented defaults.
    """
    assert parse(["--backend", "tcp:127.0.0.1:7000"]) == GatewayConfig(
        listen=("tcp:8080",),
        backends=(BackendSpec(name="tcp:127.0.0.1:7000", endpoint="tcp:127.0.0.1:7000"),),
        http_root=None,
        http_listing=False,
        sniff_timeout=2.0,
        connect_timeout=5.0,
        idle_timeout=0.0,
        fin_timeout=60.0,
        header_timeout=10.0,
        max_connections=0,
        max_per_ip=0,
        rate_per_ip=0.0,
        rate_burst=None,
        overflow="reject",
        busy_message=None,
        balance="roundrobin",
        session_key=None,
        proxy_protocol="off",
        health_interval=5.0,
        health_send=b"",
        health_expect=b"",
        retries=2,
        admin="tcp:9090:interface=127.0.0.1",
        demo=False,
    )


def test_full_command_line(tmp_path: Path) -> None:
    """
    Every option lands in the config; repeated --listen and --backend keep
    their order.
    """
    argv = [
        "--listen",
        "tcp:80",
        "--listen=unix:/tmp/gw.sock",
        "--backend",
        "tcp:10.0.0.1:7000",
        "--backend",
        "unix:/run/game.sock",
        "--http-root",
        str(tmp_path),
        "--http-listing",
        "--sniff-timeout",
        "0.5",
        "--connect-timeout",
        "3",
        "--idle-timeout",
        "600",
        "--fin-timeout",
        "0",
        "--header-timeout",
        "4",
        "--max-connections",
        "1000",
        "--overflow",
        "queue",
        "--max-per-ip",
        "8",
        "--rate-per-ip",
        "2.5",
        "--rate-burst",
        "12",
        "--busy-message",
        "Full, try later",
        "--balance",
        "hash",
        "--session-key",
        "^LOGIN (\\w+)",
        "--proxy-protocol",
        "v2",
        "--health-interval",
        "0",
        "--retries",
        "0",
        "--health-send",
        "PING\\r\\n",
        "--health-expect",
        "PONG",
        "--admin",
        "unix:/run/gw-admin.sock",
    ]
    assert parse(argv) == GatewayConfig(
        listen=("tcp:80", "unix:/tmp/gw.sock"),
        backends=(
            BackendSpec(name="tcp:10.0.0.1:7000", endpoint="tcp:10.0.0.1:7000"),
            BackendSpec(name="unix:/run/game.sock", endpoint="unix:/run/game.sock"),
        ),
        http_root=str(tmp_path),
        http_listing=True,
        sniff_timeout=0.5,
        connect_timeout=3.0,
        idle_timeout=600.0,
        fin_timeout=0.0,
        header_timeout=4.0,
        max_connections=1000,
        max_per_ip=8,
        rate_per_ip=2.5,
        rate_burst=12.0,
        overflow="queue",
        busy_message="Full, try later",
        balance="hash",
        session_key="^LOGIN (\\w+)",
        proxy_protocol="v2",
        health_interval=0.0,
        health_send=b"PING\r\n",
        health_expect=b"PONG",
        retries=0,
        admin="unix:/run/gw-admin.sock",
        demo=False,
    )


def test_demo_defaults() -> None:
    """
    --demo needs no backend and listens on loopback port 8080 by default; its
    game servers take DEMO_MAX_SESSIONS players each, and more wait in a
    waiting room that tells them their place.
    """
    assert parse(["--demo"]) == GatewayConfig(
        listen=("tcp:8080:interface=127.0.0.1",),
        demo=True,
        websocket=("/play",),
        demo_max_sessions=DEMO_MAX_SESSIONS,
        queue_size=DEMO_QUEUE_SIZE,
        queue_message=DEMO_QUEUE_MESSAGE,
    )
    assert parse(["--demo", "--admin", "none"]).admin is None


def test_demo_waiting_room_as_told() -> None:
    """
    --demo's seats and room give way to what the command line says: no
    limit (--max-sessions 0) means no room; a given size or message is kept.
    """
    unlimited = parse(["--demo", "--max-sessions", "0"])
    assert (unlimited.demo_max_sessions, unlimited.queue_size) == (0, 0)
    own = parse(
        ["--demo", "--max-sessions", "5", "--queue-size", "3", "--queue-message", "{position}"]
    )
    assert (own.demo_max_sessions, own.queue_size, own.queue_message) == (5, 3, "{position}")
    silent = parse(["--demo", "--queue-size", "0"])
    assert (silent.demo_max_sessions, silent.queue_size) == (DEMO_MAX_SESSIONS, 0)


def test_demo_with_listen() -> None:
    """
    --listen given with --demo replaces the demo's default front.
    """
    assert parse(["--demo", "--listen", "tcp:9999"]).listen == ("tcp:9999",)


def test_relative_http_root_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A relative --http-root is resolved at start-up, so twistd's --rundir or a
    later chdir cannot change what is served.
    """
    (tmp_path / "www").mkdir()
    monkeypatch.chdir(tmp_path)
    config = parse(["--backend", "tcp:h:1", "--http-root", "www"])
    assert config.http_root == str(tmp_path / "www")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--backend: at least one game backend is needed"),
        (["--backend", "nosuch:1"], "--backend: cannot use 'nosuch:1' as a client endpoint"),
        (["--backend", "tcp:host"], "--backend: cannot use 'tcp:host' as a client endpoint"),
        (["--backend", ""], "--backend: empty endpoint"),
        (["--demo", "--listen", "tcp:1", "--listen", "tcp:1"], "--listen: 'tcp:1' is given twice"),
        (["--demo", "--fin-timeout", "-2"], "--fin-timeout: must not be negative"),
        (["--demo", "--max-connections", "-1"], "--max-connections: must not be negative"),
        (["--demo", "--max-connections", "2.5"], "--max-connections: expected a whole number"),
        (["--demo", "--max-per-ip", "x"], "--max-per-ip: expected a whole number"),
        (["--demo", "--rate-per-ip", "-1"], "--rate-per-ip: must be at least 0"),
        (["--demo", "--rate-per-ip", "nan"], "--rate-per-ip: expected a finite number"),
        (["--demo", "--rate-burst", "5"], "--rate-burst: needs --rate-per-ip"),
        (
            ["--demo", "--rate-per-ip", "1", "--rate-burst", "0.5"],
            "--rate-burst: must be at least 1",
        ),
        (["--demo", "--overflow", "drop"], "--overflow: expected one of reject, queue"),
        (["--demo", "--busy-message", "a\nb"], "--busy-message: must be one line"),
        (["--demo", "--busy-message", "x" * 201], "--busy-message: at most 200 characters"),
        (["--demo", "--header-timeout", "0"], "--header-timeout: must be more than 0"),
        (["--demo", "--balance", "random"], "--balance: expected one of roundrobin, leastconn"),
        (["--demo", "--session-key", "user=(\\w+)"], "--session-key: needs --balance hash"),
        (
            ["--demo", "--balance", "hash", "--session-key", "user=\\w+"],
            "--session-key: needs a group",
        ),
        (
            ["--demo", "--balance", "hash", "--session-key", "user=(\\w+"],
            "--session-key: not a valid regular expression",
        ),
        (["--demo", "--proxy-protocol", "v3"], "--proxy-protocol: expected one of off, v1, v2"),
        (["--demo", "--health-interval", "-1"], "--health-interval: must not be negative"),
        (["--demo", "--retries", "-1"], "--retries: must not be negative"),
        (["--demo", "--admin", "bogus:1"], "--admin: cannot use 'bogus:1' as a server endpoint"),
        (
            ["--demo", "--listen", "tcp:7000", "--admin", "tcp:7000"],
            "--admin: 'tcp:7000' is also a --listen front",
        ),
        (["--demo", "--health-send", "\\x4"], "--health-send: cannot read"),
        (["--demo", "--health-expect", "\u20ac"], "--health-expect: cannot read"),
        (["--backend", "tcp:h:1", "--backend", "tcp:h:1"], "--backend: 'tcp:h:1' is given twice"),
        (["--listen", "tcp:notaport", "--demo"], "--listen: cannot use 'tcp:notaport'"),
        (
            ["--listen", "bogus:80", "--demo"],
            "--listen: cannot use 'bogus:80' as a server endpoint",
        ),
        (["--listen", " ", "--demo"], "--listen: empty endpoint"),
        (["--demo", "--sniff-timeout", "-1"], "--sniff-timeout: must not be negative, got '-1'"),
        (["--demo", "--sniff-timeout", "0"], "--sniff-timeout: must be more than 0 seconds"),
        (["--demo", "--sniff-timeout", "abc"], "--sniff-timeout: expected a number of seconds"),
        (["--demo", "--sniff-timeout", "nan"], "--sniff-timeout: expected a finite number"),
        (["--demo", "--connect-timeout", "-0.5"], "--connect-timeout: must not be negative"),
        (["--demo", "--connect-timeout", "0"], "--connect-timeout: must be more than 0 seconds"),
        (["--demo", "--idle-timeout", "-3"], "--idle-timeout: must not be negative"),
        (["--demo", "--idle-timeout", "inf"], "--idle-timeout: expected a finite number"),
        (
            ["--demo", "--http-root", "/no/such/folder"],
            "--http-root: '/no/such/folder' does not exist",
        ),
        (["--demo", "--nosuch"], "option --nosuch not recognized"),
        (["--demo", "extra"], "unexpected argument 'extra': every setting is an option"),
    ],
)
def test_bad_settings(argv: list[str], message: str) -> None:
    """
    Each bad setting raises a UsageError whose message names the setting.
    """
    with pytest.raises(UsageError) as raised:
        parse(argv)
    assert message in str(raised.value)


DURATIONS = {
    field.name.replace("_", "-"): field.name
    for field in dataclasses.fields(GatewayConfig)
    if field.name.endswith(("_timeout", "_interval")) and field.name != "cluster_timeout"
}
"""Every seconds setting, option name to config field (found from the
config's fields, so that a new one cannot be missed); C{--cluster-timeout}
has bounds of its own (milliseconds: tests/test_cluster_config.py)."""


def test_every_duration_is_known() -> None:
    """
    The seconds settings named for a timeout or an interval are the eight
    docs/reference.md lists (a new one gets its bounds and a line there).
    """
    assert sorted(DURATIONS) == [
        "connect-timeout",
        "drain-timeout",
        "fin-timeout",
        "header-timeout",
        "health-interval",
        "idle-timeout",
        "queue-timeout",
        "sniff-timeout",
    ]


@pytest.mark.parametrize("option", sorted(DURATIONS))
@pytest.mark.parametrize(
    ("value", "bound"),
    [
        ("1e-300", "at least 0.1 seconds"),
        ("0.099", "at least 0.1 seconds"),
        ("5e-324", "at least 0.1 seconds"),
        ("86400.5", "at most 86400 seconds"),
        ("1e300", "at most 86400 seconds"),
        ("inf", "expected a finite number"),
        ("-inf", "expected a finite number"),
        ("nan", "expected a finite number"),
    ],
)
def test_durations_are_bounded(option: str, value: str, bound: str) -> None:
    """
    Every seconds setting refuses a tiny duration (a busy loop: 1e-300 s
    between health checks took a core and marked the backends down), a
    huge or infinite one, and NaN, with a message naming the option, the
    bound and the value.
    """
    with pytest.raises(UsageError) as raised:
        parse(["--demo", f"--{option}", value])
    assert str(raised.value).startswith(f"--{option}: ")
    assert bound in str(raised.value)
    assert repr(value) in str(raised.value)


@pytest.mark.parametrize("option", sorted(DURATIONS))
@pytest.mark.parametrize("value", [0.1, 86400.0])
def test_duration_bounds_are_accepted(option: str, value: float) -> None:
    """
    The bounds themselves, 0.1 s and a day, are valid for every seconds
    setting.
    """
    config = parse(["--demo", f"--{option}", str(value)])
    assert getattr(config, DURATIONS[option]) == value


def test_http_root_must_be_a_directory(tmp_path: Path) -> None:
    """
    --http-root naming a file is refused.
    """
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(UsageError, match=r"--http-root: '.*file.txt' is not a directory"):
        parse(["--demo", "--http-root", str(afile)])


def without_root_powers() -> list[str]:
    """
    A command prefix under which a child process is held to file permissions:
    none for an ordinary user; for root, which may read and search any
    folder whatever its mode, C{setpriv} dropping the two capabilities that
    allow it (C{CAP_DAC_OVERRIDE}, C{CAP_DAC_READ_SEARCH}) from the bounding
    set, so that the child starts without them.  Skips the test when root
    has no C{setpriv}.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root reads any folder, and there is no setpriv to drop that power")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def test_http_root_must_be_readable(tmp_path: Path) -> None:
    """
    --http-root naming a folder that exists but that the gateway's user may
    not read (mode 000) is refused at start-up: the plugin's options exit
    with status 2 and one line naming --http-root and the folder.
    """
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0)
    # In a child process: as root, only a process without root's
    # capabilities meets the folder's mode (see without_root_powers).
    parse_argv = (
        "import sys; from gateway.options import Options; Options().parseOptions(sys.argv[1:])"
    )
    try:
        result = subprocess.run(
            [
                *without_root_powers(),
                sys.executable,
                "-c",
                parse_argv,
                "--backend",
                "tcp:127.0.0.1:1",
                "--http-root",
                str(folder),
            ],
            # The checkout's gateway package, not an installed copy.
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        folder.chmod(0o700)  # so that tmp_path can be cleaned up
    assert (result.returncode, result.stderr) == (
        2,
        f"gateway: error: --http-root: {str(folder)!r} is not readable "
        "(see: twistd gateway --help)\n",
    )


def test_plugin_options_exit_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """
    The plugin's Options turn a bad setting into one line on standard error
    and exit status 2, instead of the whole usage text.
    """
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions(["--sniff-timeout", "-1", "--demo"])
    assert raised.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "gateway: error: --sniff-timeout: must not be negative, got '-1' "
        "(see: twistd gateway --help)\n"
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """
    --version prints the gateway's version (not Twisted's) and exits 0.
    """
    from gateway import __version__

    with pytest.raises(SystemExit) as raised:
        parse(["--version"])
    assert raised.value.code == 0
    assert capsys.readouterr().out == f"gateway {__version__}\n"


@pytest.mark.parametrize(
    "pattern", ["user=(a{99999999999})", "(" * 5000 + "x" + ")" * 5000], ids=["repeat", "deep"]
)
def test_session_key_that_cannot_compile(pattern: str) -> None:
    """
    A --session-key whose repetition count overflows, or whose groups nest
    thousands deep (RecursionError in the compiler), is refused as not a
    valid regular expression, not a traceback.
    """
    with pytest.raises(UsageError, match="^--session-key: not a valid regular expression: "):
        parse(["--demo", "--balance", "hash", "--session-key", pattern])


def in_bounded_child(code: str) -> str:
    """
    Run Python C{code} in a child process held to 512 MiB of memory and 60
    seconds (for code that, were the bound it checks missing, would read an
    endless file until the machine ran out of memory); its standard output.
    """
    script = (
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))\n" + code
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_endless_token_file_is_refused(tmp_path: Path) -> None:
    """
    An --admin-token-file whose first line never ends (/dev/zero) is refused
    after reading a bounded part of it; one whose first line is a token is
    read.
    """
    printed = in_bounded_child(
        "from gateway.checks import ConfigError, read_token_file\n"
        "try:\n"
        "    read_token_file('--admin-token-file', '/dev/zero')\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    assert printed == "--admin-token-file: '/dev/zero': the first line is over 4096 characters\n"
    token = tmp_path / "token"
    token.write_text("a-token-of-sixteen-or-more\nsecond line\n")
    assert parse(["--demo", "--admin-token-file", str(token)]).admin_token == (
        "a-token-of-sixteen-or-more"
    )
