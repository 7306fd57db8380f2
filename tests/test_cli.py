"""
A command line that helps (issue 15): C{--help} grouped by topic, a
did-you-mean for a misspelt option or an endpoint written the usual way
instead of Twisted's, a port out of range refused before binding, durations
with units everywhere a duration is, and C{--version}.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactor
from twisted.python.usage import UsageError

import gateway
from gateway.checks import DURATION_UNITS, ConfigError, endpoint_hint, parse_duration
from gateway.cli import HELP_GROUPS, OTHER_GROUP, did_you_mean, package_version
from gateway.configfile import FILE_SETTINGS
from gateway.options import GatewayOptions, Options
from tests.support import TWISTD
from tests.test_configfile import parse, write


def _help(width: int = 10_000) -> str:
    """
    C{--help}'s text after the synopsis, at a width that puts each option
    on one line.
    """
    return GatewayOptions(reactor=MemoryReactor()).getUsage(width=width)


def _sections(text: str) -> dict[str, list[str]]:
    """
    The options listed under each heading of a help text, in order.
    """
    sections: dict[str, list[str]] = {}
    heading = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            heading = line[:-1]
            sections[heading] = []
        option = re.match(r" +--([a-z-]+)", line)
        if option:
            assert heading is not None, f"{line!r} is under no heading"
            sections[heading].append(option[1])
    return sections


def _long_options() -> list[str]:
    """
    Every long option of the gateway's command line.
    """
    return [name.removesuffix("=") for name in GatewayOptions().longOpt]


def test_help_lists_every_option_once_under_a_heading() -> None:
    """
    Every option appears exactly once in C{--help}, under a heading of
    L{HELP_GROUPS} (none is left for "Other options"), in the groups' order
    and the order each group lists.
    """
    sections = _sections(_help())
    listed = [name for names in sections.values() for name in names]
    assert sorted(listed) == sorted(_long_options())
    assert len(listed) == len(set(listed))
    assert OTHER_GROUP not in sections
    assert list(sections) == [heading for heading, _ in HELP_GROUPS]
    assert [sections[heading] for heading, _ in HELP_GROUPS] == [
        list(names) for _, names in HELP_GROUPS
    ]


def test_help_groups_name_only_real_options() -> None:
    """
    L{HELP_GROUPS} names each option once, and no option that does not
    exist (a renamed option would silently leave its group).
    """
    grouped = [name for _, names in HELP_GROUPS for name in names]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) <= set(_long_options())


def test_help_keeps_every_help_text_and_default() -> None:
    """
    Each option's line carries its whole help text and, for a parameter
    with one, its default, as Twisted's flat list did.
    """
    options = GatewayOptions()
    lines = {
        option[1]: line
        for line in _help().splitlines()
        if (option := re.match(r" +--([a-z-]+)", line))
    }
    for name, doc in options.docs.items():
        assert " ".join(doc.split()) in lines[name], name
        default = options.defaults.get(name)
        if default is not None and f"{name}=" in options.longOpt:
            assert lines[name].endswith(f"[default: {default}]"), name


def test_help_wraps_and_explains_units() -> None:
    """
    At the usual 80 columns no line is longer, and the help says how
    durations are written.
    """
    text = _help(width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    flat = " ".join(text.split())
    assert "a plain number is seconds" in flat
    assert "500ms, 1.5s, 10m, 2h" in flat


def test_help_from_twistd() -> None:
    """
    C{twistd gateway --help} prints the grouped help and exits 0.
    """
    result = subprocess.run(
        [TWISTD, "gateway", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: twistd [options] gateway [options]\n")
    assert "\nBackends and pools:\n" in result.stdout
    assert result.stdout.count("--max-connections=") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--max-conections", "5"],
            "option --max-conections not recognized; did you mean --max-connections?",
        ),
        (
            ["--max-conections=5"],
            "option --max-conections not recognized; did you mean --max-connections?",
        ),
        (["--backends", "tcp:h:1"], "option --backends not recognized; did you mean --backend?"),
        (
            ["--idle_timeout", "5"],
            "option --idle_timeout not recognized; did you mean --idle-timeout?",
        ),
        (["--flavour", "blue"], "option --flavour not recognized"),
    ],
)
def test_misspelt_option(argv: list[str], message: str) -> None:
    """
    An unknown long option is refused with the closest real one, if one is
    close enough; otherwise with getopt's message alone.
    """
    with pytest.raises(UsageError) as error:
        parse(argv)
    assert str(error.value) == message


def test_misspelt_option_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """
    The plugin's options keep the one-line error format with the suggestion.
    """
    with pytest.raises(SystemExit) as exited:
        Options().parseOptions(["--max-conections", "5"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "gateway: error: option --max-conections not recognized; did you mean "
        "--max-connections? (see: twistd gateway --help)\n"
    )


def test_did_you_mean_leaves_other_errors() -> None:
    """
    Messages other than getopt's "not recognized" pass unchanged.
    """
    assert did_you_mean("--listen: empty endpoint", ["listen="]) == "--listen: empty endpoint"
    assert did_you_mean("option --lisen not recognized", ["listen="]) == (
        "option --lisen not recognized; did you mean --listen?"
    )


ENDPOINT_HINTS = [
    ("--listen", "8080", "tcp:8080"),
    ("--listen", ":8080", "tcp:8080"),
    ("--listen", "*:8080", "tcp:8080"),
    ("--listen", "127.0.0.1:8080", "tcp:8080:interface=127.0.0.1"),
    ("--listen", "[::1]:8080", "tcp6:8080:interface=\\:\\:1"),
    ("--admin", "9090", "tcp:9090"),
    ("--backend", "localhost:7777", "tcp:localhost:7777"),
    ("--backend", "10.0.0.5:7000", "tcp:10.0.0.5:7000"),
    ("--backend", "game-1.example:7000", "tcp:game-1.example:7000"),
    ("--backend", "7777", "tcp:localhost:7777"),
    ("--backend", "[::1]:7777", "tcp:\\:\\:1:7777"),
]


@pytest.mark.parametrize(("option", "written", "meant"), ENDPOINT_HINTS)
def test_endpoint_hint(option: str, written: str, meant: str) -> None:
    """
    An endpoint written as a port or HOST:PORT is refused, with the
    endpoint string it probably meant; that string is accepted.
    """
    with pytest.raises(UsageError) as error:
        parse([option, written, "--backend", "tcp:127.0.0.1:1"])
    assert str(error.value).endswith(f"; did you mean '{meant}'?")
    assert str(error.value).startswith(f"{option}: cannot use {written!r} as a ")
    parse([option, meant, "--backend", "tcp:127.0.0.1:1"])


@pytest.mark.parametrize(
    ("written", "kind"),
    [
        ("tcp:7777", "client"),  # a known type: its own error, no guess
        ("http://localhost:7777", "client"),
        ("localhost:70000", "client"),
        ("localhost:0", "client"),
        ("80800", "server"),
        ("game.example", "client"),
    ],
)
def test_no_endpoint_hint(written: str, kind: str) -> None:
    """
    No suggestion where there is no likely one (a known endpoint type, a
    URL, a port out of range, no port).
    """
    if written == "tcp:7777":
        with pytest.raises(UsageError) as error:
            parse(["--backend", written])
        assert "did you mean" not in str(error.value)
    else:
        assert endpoint_hint(written, kind) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--listen", "tcp:70000"],
            "--listen: 'tcp:70000': port 70000 is out of range (0 to 65535)",
        ),
        (["--listen", "tcp:port=65536"], "--listen: 'tcp:port=65536': port 65536 is out of range"),
        (["--listen", "tcp6:70000"], "--listen: 'tcp6:70000': port 70000 is out of range"),
        (["--listen", "haproxy:tcp:-1"], "--listen: 'haproxy:tcp:-1': port -1 is out of range"),
        (["--admin", "tcp:99999"], "--admin: 'tcp:99999': port 99999 is out of range"),
        (
            ["--backend", "tcp:game.example:70000"],
            "--backend: 'tcp:game.example:70000': port 70000 is out of range (1 to 65535)",
        ),
        (["--backend", "tcp:h:0"], "--backend: 'tcp:h:0': port 0 is out of range (1 to 65535)"),
        (["--backend", "tls:h:65536"], "--backend: 'tls:h:65536': port 65536 is out of range"),
        (["--backend", "tcp:host=h:port=70000"], "port 70000 is out of range (1 to 65535)"),
    ],
)
def test_port_out_of_range(argv: list[str], message: str) -> None:
    """
    A TCP port out of range, which Twisted's parsers take and only binding
    or connecting would refuse, is refused with the option and the range.
    """
    with pytest.raises(UsageError) as error:
        parse([*argv, "--backend", "tcp:127.0.0.1:1"] if "--backend" not in argv else argv)
    assert message in str(error.value)


def test_tls_front_port_out_of_range(tmp_path: Path) -> None:
    """
    The gateway's own C{tls:} front checks its port too.
    """
    with pytest.raises(UsageError) as error:
        parse(["--listen", f"tls:{tmp_path}:port=70000", "--backend", "tcp:127.0.0.1:1"])
    assert "port 70000 is out of range (0 to 65535)" in str(error.value)


def test_ports_at_the_bounds() -> None:
    """
    Ports 0 (a server's "any free port") and 65535 are accepted; so is a
    client's 1.
    """
    config = parse(
        [
            "--listen",
            "tcp:0",
            "--listen",
            "tcp:65535",
            "--backend",
            "tcp:h:65535",
            "--backend",
            "tcp:h:1",
        ]
    )
    assert config.listen == ("tcp:0", "tcp:65535")


def test_check_config_refuses_port_out_of_range() -> None:
    """
    C{twistd gateway --check-config} refuses a port out of range with one
    line and status 2, binding nothing.
    """
    result = subprocess.run(
        [TWISTD, "gateway", "--check-config", "--demo", "--listen", "tcp:70000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        2,
        "",
        "gateway: error: --listen: 'tcp:70000': port 70000 is out of range (0 to 65535) "
        "(see: twistd gateway --help)\n",
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        ("1.5", 1.5),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        (" 10 m ", 600.0),
        (".5h", 1800.0),
        ("1e1s", 10.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """
    A duration is a number of seconds, or a number and a unit.
    """
    assert parse_duration("--x", text) == seconds


@pytest.mark.parametrize(
    "text", ["", "m", "10 minutes", "10M", "1h30m", "nans", "infm", "1_0s", "5x"]
)
def test_bad_duration(text: str) -> None:
    """
    Anything else is refused, naming the option and what is expected.
    """
    with pytest.raises(ConfigError, match=r"^--x: expected "):
        parse_duration("--x", text)


@given(
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from(sorted(DURATION_UNITS)),
)
def test_duration_with_unit_property(number: float, unit: str) -> None:
    """
    Any number written with any unit is that many units, in seconds; with
    no unit, that many seconds.
    """
    assert parse_duration("--x", f"{number!r}{unit}") == number * DURATION_UNITS[unit]
    assert parse_duration("--x", repr(number)) == number


@given(st.text(max_size=20))
def test_duration_never_crashes(text: str) -> None:
    """
    Whatever is written, the parser returns a finite number or refuses it
    with L{ConfigError}; nothing else escapes.
    """
    try:
        value = parse_duration("--x", text)
    except ConfigError as error:
        assert str(error).startswith("--x: expected ")
    else:
        assert math.isfinite(value)


def test_durations_on_the_command_line() -> None:
    """
    Every duration option takes a unit; a plain number is still seconds.
    """
    config = parse(
        [
            "--backend",
            "tcp:127.0.0.1:1",
            "--sniff-timeout",
            "500ms",
            "--connect-timeout",
            "1.5s",
            "--idle-timeout",
            "10m",
            "--fin-timeout",
            "2h",
            "--header-timeout",
            "30",
            "--drain-timeout",
            "1m",
            "--health-interval",
            "2s",
            "--websocket-ping",
            "1m",
        ]
    )
    assert (
        config.sniff_timeout,
        config.connect_timeout,
        config.idle_timeout,
        config.fin_timeout,
        config.header_timeout,
        config.drain_timeout,
        config.health_interval,
        config.websocket_ping,
    ) == (0.5, 1.5, 600.0, 7200.0, 30.0, 60.0, 2.0, 60.0)


def test_duration_bounds_apply_after_units() -> None:
    """
    The bounds of a duration (0.1 s to a day) apply to its value in seconds.
    """
    with pytest.raises(UsageError, match="must be at least 0.1 seconds"):
        parse(["--backend", "tcp:127.0.0.1:1", "--idle-timeout", "50ms"])
    with pytest.raises(UsageError, match="must be at most 86400 seconds"):
        parse(["--backend", "tcp:127.0.0.1:1", "--idle-timeout", "25h"])


def test_durations_in_the_file(tmp_path: Path) -> None:
    """
    In the TOML file a duration is a number of seconds or a string with a
    unit, at the top level, in a pool and in a route.
    """
    path = write(
        tmp_path,
        """
idle-timeout = "10m"
drain-timeout = 45
connect-timeout = "1.5s"
websocket-ping = 30.5

[pool.api]
health-interval = "2s"
connect-timeout = "500ms"

[[backend]]
endpoint = "tcp:127.0.0.1:7000"

[[backend]]
pool = "api"
endpoint = "tcp:127.0.0.1:8000"

[[route]]
path = "/api"
pool = "api"
timeout = "2m"
""",
    )
    config = parse(["--config", path])
    assert (config.idle_timeout, config.drain_timeout, config.websocket_ping) == (600, 45, 30.5)
    assert config.game_pool.connect_timeout == 1.5
    (api,) = config.pools
    assert (api.health_interval, api.connect_timeout) == (2.0, 0.5)
    assert config.routes[0].timeout == 120.0


def test_bad_duration_in_the_file(tmp_path: Path) -> None:
    """
    A bad duration string in the file is refused naming the file and key.
    """
    path = write(
        tmp_path,
        '[[backend]]\nendpoint = "tcp:h:1"\n[[backend]]\nendpoint = "tcp:h:2"\npool = "api"\n'
        '[pool.api]\nconnect-timeout = "soon"\n',
    )
    with pytest.raises(
        UsageError, match=r"connect-timeout: expected a number of seconds or a dur"
    ):
        parse(["--config", path])


def test_version_from_twistd() -> None:
    """
    C{twistd gateway --version} prints C{gateway VERSION}, the installed
    package's, and exits 0.
    """
    result = subprocess.run(
        [TWISTD, "gateway", "--version"], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (
        0,
        f"gateway {importlib.metadata.version('gateway')}\n",
    )


def test_version_without_metadata() -> None:
    """
    Without installed metadata, the version is the package's C{__version__}.
    """
    assert package_version("gateway") == importlib.metadata.version("gateway")
    assert package_version("no-such-distribution-for-gateway") == gateway.__version__


def test_version_option_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{--version} ends the parse with status 0 before any check.
    """
    with pytest.raises(SystemExit) as exited:
        GatewayOptions(reactor=MemoryReactor()).parseOptions(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"gateway {package_version()}\n"


def test_every_duration_key_of_the_file_takes_a_unit() -> None:
    """
    The file's duration keys (those taking a string with a unit) are the
    command line's durations: each timeout and interval, the ping and the
    waiting room's update interval, the cluster's TTLs.
    """
    durations = {name for name, kind in FILE_SETTINGS.items() if "'10m'" in kind}
    assert durations == {
        name for name in _long_options() if name.endswith(("-timeout", "-interval"))
    } | {"websocket-ping", "queue-update", "cluster-ttl", "affinity-ttl"}


def test_readme_lists_every_option() -> None:
    """
    docs/reference.md's table of options has one row per option
    (C{--help} aside) and none for an option that does not exist.
    """
    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "reference.md").read_text()
    rows = re.findall(r"^\| `--([a-z-]+)", text, re.MULTILINE)
    assert sorted(set(rows)) == sorted(set(_long_options()) - {"help"})
