"""
The TOML configuration file as data: a file and an argv in, a whole
L{GatewayConfig} out; every error path with its message; --check-config.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactor
from twisted.python.usage import UsageError

from gateway.config import BackendSpec, GatewayConfig
from gateway.configfile import MAX_FILE_SIZE
from gateway.options import GatewayOptions
from gateway.pool.health import HealthCheck
from gateway.process.parts import health_checks
from tests.support import TWISTD, Backend, GatewayProcess, connect, recv_exactly, wait_for
from tests.test_options import DURATIONS, in_bounded_child

TOKEN = "file-admin-token-0123456789"


def parse(argv: list[str]) -> GatewayConfig:
    """
    Parse C{argv} as the plugin would, against a memory reactor.
    """
    options = GatewayOptions(reactor=MemoryReactor())
    options.parseOptions(argv)
    return options.config


def write(tmp_path: Path, text: str) -> str:
    """
    Write a config file; its path.
    """
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


FULL = f"""
listen = ["tcp:4000", "unix:/tmp/gw-test.sock"]
sniff-timeout = 0.5
connect-timeout = 3
idle-timeout = 900
fin-timeout = 30
header-timeout = 5
drain-timeout = 120
max-connections = 1000
max-per-ip = 20
rate-per-ip = 5.5
rate-burst = 12
overflow = "queue"
busy-message = "busy"
balance = "hash"
session-key = '^LOGIN (\\w+)'
proxy-protocol = "v1"
health-interval = 2
health-send = "PING\\\\r\\\\n"
health-expect = "PONG"
retries = 1
admin = "tcp:9191:interface=127.0.0.1"
admin-token = "{TOKEN}"
http-listing = true

[[backend]]
name = "eu-1"
endpoint = "tcp:10.0.0.11:7777"
weight = 3
health-send = "HELLO\\\\n"
health-expect = "WELCOME"
proxy-protocol = "v2"

[[backend]]
endpoint = "tcp:10.0.0.12:7777"
"""


def test_full_file(tmp_path: Path) -> None:
    """
    Every setting of a file lands in the config; a backend without a name is
    named by its endpoint; the file's path is kept for SIGHUP.
    """
    path = write(tmp_path, FULL)
    config = parse(["--config", path])
    assert config == GatewayConfig(
        listen=("tcp:4000", "unix:/tmp/gw-test.sock"),
        backends=(
            BackendSpec(
                name="eu-1",
                endpoint="tcp:10.0.0.11:7777",
                weight=3,
                health_send=b"HELLO\n",
                health_expect=b"WELCOME",
                proxy_protocol="v2",
            ),
            BackendSpec(name="tcp:10.0.0.12:7777", endpoint="tcp:10.0.0.12:7777"),
        ),
        http_root=None,
        http_listing=True,
        sniff_timeout=0.5,
        connect_timeout=3.0,
        idle_timeout=900.0,
        fin_timeout=30.0,
        header_timeout=5.0,
        drain_timeout=120.0,
        max_connections=1000,
        max_per_ip=20,
        rate_per_ip=5.5,
        rate_burst=12.0,
        overflow="queue",
        busy_message="busy",
        balance="hash",
        session_key="^LOGIN (\\w+)",
        proxy_protocol="v1",
        health_interval=2.0,
        health_send=b"PING\r\n",
        health_expect=b"PONG",
        retries=1,
        admin="tcp:9191:interface=127.0.0.1",
        admin_token=TOKEN,
        access_log=None,
        demo=False,
        config_file=path,
    )


def test_per_backend_health_checks(tmp_path: Path) -> None:
    """
    A backend with its own check (or PROXY setting) gets a health check of
    its own, the others the gateway's; its probes send its PROXY header.
    """
    config = parse(["--config", write(tmp_path, FULL)])
    checks = health_checks(config, config.game_pool)
    assert set(checks) == {"eu-1"}
    check = checks["eu-1"]
    assert (check.send, check.expect) == (b"HELLO\n", b"WELCOME")
    assert check.preamble is not None and check.preamble.startswith(b"\r\n\r\n\x00\r\nQUIT\n")
    assert HealthCheck().preamble is None


def test_command_line_wins(tmp_path: Path) -> None:
    """
    A setting given on the command line replaces the file's; a --backend or
    --listen replaces the file's whole list; the rest still comes from the file.
    """
    path = write(tmp_path, FULL)
    config = parse(
        [
            "--config",
            path,
            "--max-per-ip",
            "3",
            "--backend",
            "tcp:127.0.0.1:1",
            "--overflow=reject",
        ]
    )
    assert config.max_per_ip == 3
    assert config.overflow == "reject"
    assert config.backends == (BackendSpec(name="tcp:127.0.0.1:1", endpoint="tcp:127.0.0.1:1"),)
    assert config.max_connections == 1000
    assert config.listen == ("tcp:4000", "unix:/tmp/gw-test.sock")
    assert parse(["--config", path, "--listen", "tcp:5000"]).listen == ("tcp:5000",)


def test_a_default_on_the_command_line_still_wins(tmp_path: Path) -> None:
    """
    Giving an option its default value on the command line still overrides
    the file (what was typed wins, not what differs from the default).
    """
    path = write(tmp_path, 'max-per-ip = 9\n[[backend]]\nendpoint = "tcp:127.0.0.1:1"\n')
    assert parse(["--config", path, "--max-per-ip", "0"]).max_per_ip == 0
    assert parse(["--config", path]).max_per_ip == 9


def test_minimal_file_has_the_defaults(tmp_path: Path) -> None:
    """
    A file with one backend gives the same config as the same backend on the
    command line (apart from where it came from).
    """
    path = write(tmp_path, 'backend = ["tcp:127.0.0.1:7000"]\n')
    from_file = parse(["--config", path])
    from_argv = parse(["--backend", "tcp:127.0.0.1:7000"])
    assert from_file == dataclasses.replace(from_argv, config_file=path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max-connections = \n", "not valid TOML: Invalid value (at line 2, column 19)"),
        (
            'x = 1\n\nlisten = ["tcp:1" "x"]\n',
            "not valid TOML: Unclosed array (at line 4, column 19)",
        ),
        (
            "retries = 1\nretries = 2\n",
            "not valid TOML: Cannot overwrite a value (at line 3, column 12)",
        ),
        (
            "max_connections = 5",
            "unknown setting 'max_connections' (did you mean 'max-connections'?)",
        ),
        ("backends = []", "unknown setting 'backends' (did you mean [[backend]]?)"),
        ("colour = 'blue'", "unknown setting 'colour'"),
        ('max-connections = "5"', "max-connections: must be a whole number, got '5'"),
        ("max-connections = 5.5", "max-connections: must be a whole number, got 5.5"),
        ("max-connections = true", "max-connections: must be a whole number, got True"),
        ("max-connections = -1", "max-connections: must not be negative"),
        (
            "sniff-timeout = 'soon'",
            "sniff-timeout: expected a number of seconds or a duration such as 500ms, 1.5s, "
            "10m or 2h, got 'soon'",
        ),
        (
            "sniff-timeout = true",
            "sniff-timeout: must be a number of seconds or a string such as '10m', got True",
        ),
        ("sniff-timeout = 0", "sniff-timeout: must be more than 0 seconds, got '0'"),
        ("sniff-timeout = inf", "sniff-timeout:"),
        ("http-listing = 1", "http-listing: must be true or false, got 1"),
        ("listen = 8080", "listen: must be a list of endpoint strings, got 8080"),
        ('listen = ["tcp:nope"]', "listen: "),
        ('balance = "random"', "balance: "),
        ("session-key = '(unclosed'", "session-key: not a valid regular expression"),
        ("backend = 5", "backend: must be an array of tables"),
        ("[[backend]]\nname = 'x'", "backend[0]: needs an endpoint"),
        ("[[backend]]\nendpoint = 'tcp:h:1'\ncolour = 1", "backend[0]: unknown key 'colour'"),
        ("[[backend]]\nendpoint = 'nope:1'", "backend[0]: "),
        (
            "[[backend]]\nname = 'a'\nendpoint = 'tcp:h:1'\nweight = 0",
            "backend 'a': weight must be 1",
        ),
        (
            "[[backend]]\nname = 'a'\nendpoint = 'tcp:h:1'\nweight = '2'",
            "backend[0].weight: must be",
        ),
        (
            "[[backend]]\nname = 'a'\nendpoint = 'tcp:h:1'\nproxy-protocol = 'v3'",
            "backend 'a': proxy-protocol:",
        ),
        (
            "[[backend]]\nname = 'a'\nendpoint = 'tcp:h:1'\n"
            "[[backend]]\nname = 'a'\nendpoint = 'tcp:h:2'",
            "backend 'a': the name 'a' is given twice",
        ),
        ("[[backend]]\nendpoint = 'tcp:h:1'\n[[backend]]\nendpoint = 'tcp:h:1'", "is given twice"),
        ("rate-burst = 5\nbackend = ['tcp:h:1']", "rate-burst: needs rate-per-ip"),
        ("admin-token = 'short'\nbackend = ['tcp:h:1']", "admin-token: at least 16 characters"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    """
    Each bad file is refused with a message that names the file and the key
    (and the line, for a TOML syntax error).
    """
    if "backend" not in text and "=" in text:
        # A file with a backend, so that the error is about the key under test.
        text = 'backend = ["tcp:127.0.0.1:9"]\n' + text
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as raised:
        parse(["--config", path])
    assert str(raised.value).startswith(f"{path}: ") or "--config" in str(raised.value)
    assert message in str(raised.value)


def test_file_without_backends(tmp_path: Path) -> None:
    """
    A file with no backend, and none on the command line, is refused naming
    both places a backend can be given.
    """
    path = write(tmp_path, "balance = 'leastconn'\n")
    with pytest.raises(UsageError) as raised:
        parse(["--config", path])
    assert str(raised.value) == (
        f"--backend (or [[backend]] in {path}): at least one game backend is needed "
        "(or --demo for the built-in demo game, or [[route]]s in the file for an "
        "HTTP-only front)"
    )


def test_missing_file() -> None:
    """
    A file that cannot be read is refused naming --config and the reason.
    """
    with pytest.raises(UsageError, match=r"--config: cannot read '/nonexistent.toml': No such"):
        parse(["--config", "/nonexistent.toml"])


def _check(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWISTD, "gateway", "--check-config", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def test_check_config_valid(tmp_path: Path) -> None:
    """
    twistd gateway --check-config with a valid file prints a summary, binds
    nothing and exits 0 (the file's ports need not be free).
    """
    path = write(tmp_path, FULL)
    result = _check("--config", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"gateway: {path}: the configuration is valid: ")
    assert "eu-1 (tcp:10.0.0.11:7777, weight 3)" in result.stdout


def test_check_config_invalid(tmp_path: Path) -> None:
    """
    With an invalid file it prints one line naming the file and key on
    standard error and exits 2.
    """
    path = write(tmp_path, "max-connections = -5\nbackend = ['tcp:127.0.0.1:9']\n")
    result = _check("--config", path)
    assert result.returncode == 2
    assert result.stderr == (
        f"gateway: error: {path}: max-connections: must not be negative, got '-5' "
        "(see: twistd gateway --help)\n"
    )
    assert result.stdout == ""


def test_python_is_the_one_running(tmp_path: Path) -> None:
    """
    The twistd used here is the one of the venv running the tests.
    """
    assert Path(TWISTD).parent == Path(sys.executable).parent


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, monkeypatch: Any) -> None:
    """
    Paths in the file that are not absolute are taken from the file's
    folder, whatever folder the gateway starts in; --config itself is kept
    absolute (twistd --rundir changes folders before a SIGHUP reads it).
    """
    conf = tmp_path / "conf"
    (conf / "www").mkdir(parents=True)
    (conf / "token").write_text(TOKEN + "\n")
    (conf / "gateway.toml").write_text(
        'http-root = "www"\naccess-log = "access.jsonl"\nhandover = "h.sock"\n'
        'admin-token-file = "token"\nbackend = ["tcp:127.0.0.1:9"]\n'
    )
    monkeypatch.chdir(tmp_path)
    config = parse(["--config", "conf/gateway.toml"])
    assert config.http_root == str(conf / "www")
    assert config.access_log == str(conf / "access.jsonl")
    assert config.handover == str(conf / "h.sock")
    assert config.admin_token == TOKEN
    assert config.config_file == str(conf / "gateway.toml")


def test_command_line_token_replaces_the_files(tmp_path: Path) -> None:
    """
    --admin-token on the command line wins over the file's admin-token-file
    (and the other way round), instead of "not both".
    """
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file-0123456789\n")
    path = write(tmp_path, f'admin-token-file = "{token_file}"\nbackend = ["tcp:127.0.0.1:9"]\n')
    assert parse(["--config", path, "--admin-token", TOKEN]).admin_token == TOKEN
    path = write(tmp_path, f'admin-token = "{TOKEN}"\nbackend = ["tcp:127.0.0.1:9"]\n')
    config = parse(["--config", path, "--admin-token-file", str(token_file)])
    assert config.admin_token == "from-the-file-0123456789"


DEEP = "a = " + "[" * 5000 + "]" * 5000 + "\n"
"""Arrays nested thousands deep: tomllib recurses into them (RecursionError)."""

UNREADABLE_FILES: list[tuple[str, bytes, str]] = [
    (
        "not UTF-8",
        b"backend = ['tcp:h:1']\nbalance = '\xff'\n",
        "not UTF-8 text (byte 0xff on line 2)",
    ),
    ("nested too deeply", DEEP.encode(), "arrays or tables nested too deeply"),
    ("inline tables nested", ("a = " + "{b = " * 3000 + "1" + "}" * 3000).encode(), "too deeply"),
    ("an integer too long", b"retries = " + b"1" * 5000 + b"\n", "Exceeds the limit"),
    ("too large", b"# " + b"x" * MAX_FILE_SIZE + b"\n", "larger than 1024 KiB"),
]
"""Files that cannot be read as TOML, each with what the message says."""


@pytest.mark.parametrize(
    ("content", "message"),
    [(content, message) for _, content, message in UNREADABLE_FILES],
    ids=[name for name, _, _ in UNREADABLE_FILES],
)
def test_unreadable_files(tmp_path: Path, content: bytes, message: str) -> None:
    """
    A file that is not UTF-8, nests arrays or inline tables thousands deep,
    has an integer too long for Python or is larger than L{MAX_FILE_SIZE}
    is refused with one line naming the file and what is wrong (these were
    tracebacks: UnicodeDecodeError, RecursionError, ValueError).
    """
    path = tmp_path / "gateway.toml"
    path.write_bytes(content)
    with pytest.raises(UsageError) as raised:
        parse(["--config", str(path)])
    text = str(raised.value)
    assert text.startswith(f"{path}: not valid TOML: ") or text.startswith(f"{path}: larger")
    assert message in text
    assert "\n" not in text
    assert len(text) < 300


def test_folder_or_endless_file_is_refused(tmp_path: Path) -> None:
    """
    A folder given as the file is refused naming --config; an endless file
    (/dev/zero) is refused after reading at most L{MAX_FILE_SIZE} bytes of
    it (checked in a child process held to 512 MiB of memory, since reading
    it all would take every byte the machine has).
    """
    with pytest.raises(UsageError, match=r"^--config: cannot read '.*': Is a directory$"):
        parse(["--config", str(tmp_path)])
    printed = in_bounded_child(
        "from gateway.config import ConfigError\n"
        "from gateway.configfile import read_config_file\n"
        "try:\n"
        "    read_config_file('/dev/zero')\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    assert printed == "/dev/zero: larger than 1024 KiB, not a config file\n"


def test_values_are_shown_short(tmp_path: Path) -> None:
    """
    A value of the wrong type is shown cut short in the message, however
    long or deeply nested it is (tomllib takes arrays nested hundreds deep).
    """
    nested = "[" * 400 + "]" * 400
    path = write(tmp_path, f"backend = ['tcp:h:1']\nretries = {nested}\nlisten = {nested}\n")
    with pytest.raises(UsageError) as raised:
        parse(["--config", path])
    assert str(raised.value).startswith(f"{path}: retries: must be a whole number, got [[[")
    assert len(str(raised.value)) < 200
    path = write(tmp_path, "backend = ['tcp:h:1']\nretries = '" + "9" * 10_000 + "'\n")
    with pytest.raises(UsageError) as raised:
        parse(["--config", path])
    assert len(str(raised.value)) < 200


@pytest.mark.parametrize("key", sorted(DURATIONS))
@pytest.mark.parametrize(
    ("value", "bound"),
    [
        ("1e-300", "at least 0.1 seconds"),
        ("1e300", "at most 86400 seconds"),
        ("inf", "expected a finite number"),
        ("nan", "expected a finite number"),
    ],
)
def test_durations_in_the_file_are_bounded(
    tmp_path: Path, key: str, value: str, bound: str
) -> None:
    """
    Every seconds setting in the file has the command line's bounds, and
    the message names the file and the key.
    """
    path = write(tmp_path, f"backend = ['tcp:h:1']\n{key} = {value}\n")
    with pytest.raises(UsageError) as raised:
        parse(["--config", path])
    assert str(raised.value).startswith(f"{path}: {key}: ")
    assert bound in str(raised.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"backend = ['tcp:127.0.0.1:9']\nhealth-interval = 1e-300\n", "at least 0.1 seconds"),
        (DEEP.encode(), "nested too deeply"),
        (b"backend = ['tcp:127.0.0.1:9']\nbalance = '\xff'\n", "not UTF-8"),
    ],
    ids=["tiny-interval", "deep", "not-utf-8"],
)
def test_bad_file_stops_twistd_with_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    """
    twistd -n gateway with such a file exits with status 2 and one line on
    standard error naming the file, before binding anything.
    """
    path = tmp_path / "gateway.toml"
    path.write_bytes(content)
    result = subprocess.run(
        [
            *(TWISTD, "-n", "--pidfile=", "gateway", "--config", str(path)),
            *("--admin", "none", "--listen", "tcp:0:interface=127.0.0.1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"gateway: error: {path}: ")
    assert message in lines[0]
    assert "listening on" not in result.stdout


def _refusals_past(gateway: GatewayProcess, count: int) -> bool:
    """
    Whether the gateway has logged more than C{count} refused reloads.
    """
    return gateway.log().count("reload refused") > count


def test_sighup_with_a_bad_file_keeps_the_running_configuration(
    tmp_path: Path, echo_backend: Backend
) -> None:
    """
    A SIGHUP reload of a file that is not UTF-8, nests too deeply or has a
    tiny interval logs one error line each (no traceback) and changes
    nothing: the gateway goes on relaying with the configuration it had.
    """
    config = tmp_path / "gateway.toml"
    good = f"sniff-timeout = 0.2\nhealth-interval = 0\nbackend = ['{echo_backend.endpoint}']\n"
    config.write_text(good)
    with GatewayProcess(["--config", str(config)], tmp_path) as gateway:
        assert gateway.process is not None
        for content, message in [
            (good.encode() + b"balance = '\xff'\n", "not UTF-8 text (byte 0xff on line 4)"),
            (DEEP.encode(), "arrays or tables nested too deeply"),
            (good.encode() + b"connect-timeout = 1e-300\n", "connect-timeout: must be at least"),
        ]:
            config.write_bytes(content)
            before = gateway.log().count("reload refused")
            gateway.process.send_signal(signal.SIGHUP)
            wait_for(partial(_refusals_past, gateway, before), "the refusal")
            assert f"the running configuration stays: {config}: " in gateway.log()
            assert message in gateway.log()
            with connect(gateway.port) as client:
                client.sendall(b"ping\n")
                assert recv_exactly(client, 5) == b"ping\n"
        assert "Traceback" not in gateway.log()
        assert gateway.log().count("reload refused") == 3
        assert gateway.process.poll() is None
