"""
Tests for the waiting room's settings (L{gateway.queueconfig}): the
C{--queue-*} options and their file keys, the C{--queue-message} template,
the C{[[queue-class]]} tables, their cross-checks and C{--check-config}.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from ipaddress import ip_network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.python.usage import UsageError

from gateway.checks import ConfigError
from gateway.checksummary import summary
from gateway.config import GatewayConfig, QueueClassSpec
from gateway.queueconfig import (
    MAX_QUEUE_MESSAGE,
    QUEUE_FIELDS,
    RawQueueClass,
    check_queue_classes,
    check_queue_message,
)
from tests.support import start_gateway
from tests.test_configfile import parse, write

BACKEND = ["--backend", "tcp:127.0.0.1:7000"]
LIMITED = [*BACKEND, "--max-sessions", "4"]
ROOM = [*LIMITED, "--queue-size", "10"]

TWO_CLASSES = """
queue-size = 100
queue-timeout = "10m"
queue-update = 2.5
queue-message = "Server full: you are {position} of {length}, about {eta} s. {{wait}}"
max-sessions = 8

[[backend]]
name = "eu-1"
endpoint = "tcp:127.0.0.1:7000"

[[backend]]
name = "eu-2"
endpoint = "tcp:127.0.0.1:7001"
max-sessions = 4

[[queue-class]]
name = "subscribers"
priority = 10
first-line = '^LOGIN \\S+ tier=gold'

[[queue-class]]
name = "staff"
priority = 100
reserved = 1
from = ["10.0.0.0/8", "2001:db8::/32"]
first-line = '^LOGIN admin-'

[[queue-class]]
name = "office"
priority = 10
reserved = 2
from = "192.0.2.0/24"
"""


def test_defaults() -> None:
    """
    Without the options there is no waiting room: size 0, the documented
    timeout and update interval, a silent wait, no classes.
    """
    config = parse(BACKEND)
    assert (
        config.queue_size,
        config.queue_timeout,
        config.queue_update,
        config.queue_message,
        config.queue_classes,
    ) == (0, 300.0, 5.0, None, ())


def test_options_on_the_command_line() -> None:
    """
    The four options become the configuration's four fields (durations
    with units), and nothing else changes.
    """
    config = parse(
        [
            *ROOM,
            *("--queue-timeout", "2m", "--queue-update", "500ms"),
            *("--queue-message", "{position}/{length} eta {eta}s"),
        ]
    )
    assert config == dataclasses.replace(
        parse(LIMITED),
        queue_size=10,
        queue_timeout=120.0,
        queue_update=0.5,
        queue_message="{position}/{length} eta {eta}s",
    )


def test_file_with_two_classes(tmp_path: Path) -> None:
    """
    A file with a waiting room and classes parses to specs sorted by
    priority, highest first, in the file's order among equals; C{from}
    takes one CIDR string or a list; C{reserved} defaults to 0.
    """
    config = parse(["--config", write(tmp_path, TWO_CLASSES)])
    assert (config.queue_size, config.queue_timeout, config.queue_update) == (100, 600.0, 2.5)
    assert config.queue_message == (
        "Server full: you are {position} of {length}, about {eta} s. {{wait}}"
    )
    assert config.queue_classes == (
        QueueClassSpec(
            name="staff",
            priority=100,
            reserved=1,
            networks=(ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")),
            first_line=re.compile(rb"^LOGIN admin-"),
        ),
        QueueClassSpec(
            name="subscribers",
            priority=10,
            first_line=re.compile(rb"^LOGIN \S+ tier=gold"),
        ),
        QueueClassSpec(
            name="office", priority=10, reserved=2, networks=(ip_network("192.0.2.0/24"),)
        ),
    )
    assert config.queue_message is not None
    assert config.queue_message.format(position=3, length=7, eta="?") == (
        "Server full: you are 3 of 7, about ? s. {wait}"
    )


def test_command_line_wins_over_the_file(tmp_path: Path) -> None:
    """
    An option given on the command line replaces the file's key; the
    file's classes stay.
    """
    path = write(tmp_path, TWO_CLASSES)
    config = parse(["--config", path, "--queue-size", "3", "--queue-message", "wait"])
    assert (config.queue_size, config.queue_message) == (3, "wait")
    assert [spec.name for spec in config.queue_classes] == ["staff", "subscribers", "office"]


def test_check_config_shows_the_waiting_room(tmp_path: Path) -> None:
    """
    C{--check-config}'s summary names the waiting room's settings and each
    class; without a room it says nothing of one.
    """
    config = parse(["--config", write(tmp_path, TWO_CLASSES)])
    assert (
        "waiting room 100 per pool (timeout 600 s, update every 2.5 s, message "
        "'Server full: you are {position} of {length}, about {eta} s. {{wait}}', "
        "class staff (priority 100, reserved 1, from 10.0.0.0/8 2001:db8::/32, "
        "first-line '^LOGIN admin-'), "
        "class subscribers (priority 10, first-line '^LOGIN \\S+ tier=gold'), "
        "class office (priority 10, reserved 2, from 192.0.2.0/24)); admin "
    ) in summary(config)
    assert "waiting room 10 per pool (timeout 300 s, update every 5 s, silent); " in summary(
        parse(ROOM)
    )
    assert "waiting room" not in summary(parse(LIMITED))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--queue-size", "-1"], "--queue-size: must not be negative, got '-1'"),
        (["--queue-size", "many"], "--queue-size: expected a whole number, got 'many'"),
        (["--queue-timeout", "0"], "--queue-timeout: must be more than 0 seconds"),
        (["--queue-timeout", "-5"], "--queue-timeout: must not be negative"),
        (["--queue-update", "0"], "--queue-update: must be more than 0 seconds"),
        (["--queue-update", "soon"], "--queue-update: "),
        (["--queue-message", ""], "--queue-message: empty (leave it out for a silent wait)"),
        (
            ["--queue-message", "you are {postion}"],
            "--queue-message: unknown field {postion} (the fields: {position}, {length}, "
            "{eta}); did you mean {position}?",
        ),
        (["--queue-message", "{user}"], "--queue-message: unknown field {user} (the fields:"),
        (["--queue-message", "{}"], "--queue-message: a positional field {}: name one of"),
        (["--queue-message", "{0}"], "--queue-message: a positional field {0}"),
        (["--queue-message", "{:>3}"], "--queue-message: a positional field {:>3}"),
        (
            ["--queue-message", "{position:>3}"],
            "--queue-message: a format spec or conversion in {position:>3}",
        ),
        (
            ["--queue-message", "{eta!r}"],
            "--queue-message: a format spec or conversion in {eta!r}",
        ),
        (
            ["--queue-message", "{length.real}"],
            "--queue-message: an attribute or index in {length.real}",
        ),
        (
            ["--queue-message", "{length[0]}"],
            "--queue-message: an attribute or index in {length[0]}",
        ),
        (
            ["--queue-message", "place {position"],
            "--queue-message: an unbalanced '{' at character 7 (write {{ for a literal brace)",
        ),
        (
            ["--queue-message", "a {pos{ition}"],
            "--queue-message: an unbalanced '{' at character 3",
        ),
        (
            ["--queue-message", "place} {position}"],
            "--queue-message: an unbalanced '}' at character 6 (write }} for a literal brace)",
        ),
        (
            ["--queue-message", "two\r\nlines"],
            "--queue-message: one line without control characters (the gateway ends it with "
            "CRLF), got U+000D at character 4",
        ),
        (["--queue-message", "tab\there"], "got U+0009 at character 4"),
        (["--queue-message", "nel\x85"], "got U+0085 at character 4"),
        (["--queue-message", "ls\u2028"], "got U+2028 at character 3"),
        (["--queue-message", "x" * 513], "--queue-message: at most 512 bytes of UTF-8, got 513"),
        (["--queue-message", "é" * 257], "--queue-message: at most 512 bytes of UTF-8, got 514"),
        (
            ["--queue-message", "bad \udcff byte"],
            "--queue-message: not UTF-8 text (character 5)",
        ),
    ],
)
def test_bad_options(argv: list[str], message: str) -> None:
    """
    Each bad option is refused with one line naming it and the problem.
    """
    with pytest.raises(UsageError) as raised:
        parse([*ROOM, *argv])
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            [*BACKEND, "--queue-size", "5"],
            "--queue-size: no backend has a session limit, so nobody would ever wait: give "
            "--max-sessions (or max-sessions on a [[backend]])",
        ),
        (
            [*BACKEND, "--queue-size", "5", "--workers", "2"],
            "--queue-size: not with --workers above 1 yet",
        ),
    ],
)
def test_cross_checks_on_the_command_line(argv: list[str], message: str) -> None:
    """
    A waiting room needs a backend with a session limit, and one process.
    """
    with pytest.raises(UsageError, match=re.escape(message)):
        parse(argv)


def test_demo_needs_no_limit_of_its_own() -> None:
    """
    The demo's backends are made at start (not in the configuration), so
    a waiting room with C{--demo} is not refused for want of a limit.
    """
    assert parse(["--demo", "--queue-size", "5"]).queue_size == 5


def test_no_room_without_a_size(tmp_path: Path) -> None:
    """
    A limit alone, or a size of 0, leaves the room off and is no error.
    """
    assert parse([*BACKEND, "--queue-size", "0", "--queue-message", "hi"]).queue_size == 0


_CLASS = '[[queue-class]]\nname = "vip"\npriority = 5\nfrom = "10.0.0.0/8"\n'
_HEAD = 'queue-size = 10\nmax-sessions = 4\nbackend = ["tcp:127.0.0.1:7000"]\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "queue-update = true\n",
            "gateway.toml: queue-update: must be a number of seconds or a string such as "
            "'10m', got True",
        ),
        ("queue-timeout = -1\n", "gateway.toml: queue-timeout: must not be negative"),
        ("queue-message = 5\n", "gateway.toml: queue-message: must be a string, got 5"),
        ('queue-message = "{position} {lenght}"\n', "did you mean {length}?"),
        (
            "queue-classes = []\n",
            "unknown setting 'queue-classes' (did you mean [[queue-class]]?)",
        ),
        ("queue_size = 3\n", "unknown setting 'queue_size' (did you mean 'queue-size'?)"),
        ('queue-class = "vip"\n', "queue-class: must be an array of tables ([[queue-class]])"),
        ("queue-class = [1]\n", "queue-class[0]: must be a table, got 1"),
        (
            _CLASS + "priorty = 5\n",
            "queue-class 'vip': unknown key 'priorty' (a queue class has: name, priority, "
            "reserved, from, first-line); did you mean 'priority'?",
        ),
        (
            _CLASS + "queue-timeout = 5\n",
            "queue-class 'vip': unknown key 'queue-timeout' (a queue class has: name, "
            "priority, reserved, from, first-line); queue-timeout is a top-level setting: put "
            "it before the file's first [table]",
        ),
        (
            '[[queue-class]]\npriority = 5\nfrom = "10.0.0.0/8"\n',
            "queue-class[0]: needs name (a queue class has a name and a priority)",
        ),
        (
            '[[queue-class]]\nname = "vip"\nfrom = "10.0.0.0/8"\n',
            "queue-class 'vip': needs priority",
        ),
        (
            '[[queue-class]]\nname = ""\npriority = 1\nfrom = "10.0.0.0/8"\n',
            "queue-class ''.name: must not be empty",
        ),
        (
            '[[queue-class]]\nname = 7\npriority = 1\nfrom = "10.0.0.0/8"\n',
            "queue-class[0].name: must be a string, got 7",
        ),
        (
            '[[queue-class]]\nname = "a\\nb"\npriority = 1\nfrom = "10.0.0.0/8"\n',
            ".name: must be one line without control characters",
        ),
        (
            _CLASS + _CLASS.replace("priority = 5", "priority = 6"),
            "queue-class 'vip'.name: the name 'vip' is given twice",
        ),
        (
            _CLASS.replace("priority = 5", "priority = 1001"),
            "queue-class 'vip'.priority: must be -1000 to 1000 (unmatched players have 0), "
            "got 1001",
        ),
        (_CLASS.replace("priority = 5", "priority = -1001"), "must be -1000 to 1000"),
        (
            _CLASS.replace("priority = 5", 'priority = "5"'),
            "queue-class 'vip'.priority: must be a whole number, got '5'",
        ),
        (_CLASS.replace("priority = 5", "priority = 5.5"), ".priority: must be a whole number"),
        (_CLASS.replace("priority = 5", "priority = true"), ".priority: must be a whole number"),
        (_CLASS + "reserved = -1\n", "queue-class 'vip'.reserved: must not be negative, got -1"),
        (_CLASS + "reserved = 1.0\n", ".reserved: must be a whole number, got 1.0"),
        (
            '[[queue-class]]\nname = "vip"\npriority = 5\n',
            "queue-class 'vip': needs from (client addresses, e.g. \"10.0.0.0/8\") or "
            "first-line (a regular expression on the client's first line), or both",
        ),
        (
            _CLASS.replace("10.0.0.0/8", "10.0.0.1/8"),
            "queue-class 'vip'.from: '10.0.0.1/8': 10.0.0.1/8 has host bits set",
        ),
        (
            _CLASS.replace('"10.0.0.0/8"', '["10.0.0.0/8", "2001:db8::1/32"]'),
            "queue-class 'vip'.from: '2001:db8::1/32': 2001:db8::1/32 has host bits set",
        ),
        (
            _CLASS.replace("10.0.0.0/8", "10.0.0.0/33"),
            "queue-class 'vip'.from: '10.0.0.0/33': ",
        ),
        (
            _CLASS.replace("10.0.0.0/8", "example.com"),
            "queue-class 'vip'.from: 'example.com': 'example.com' does not appear to be an IPv4 "
            "or IPv6 network",
        ),
        (
            _CLASS.replace('"10.0.0.0/8"', "[]"),
            "queue-class 'vip'.from: must be a CIDR string or a list of them",
        ),
        (
            _CLASS.replace('"10.0.0.0/8"', "[10]"),
            "queue-class 'vip'.from: must be a CIDR string or a list of them",
        ),
        (
            _CLASS + "first-line = '(unclosed'\n",
            "queue-class 'vip'.first-line: not a valid regular expression: missing ), "
            "unterminated subpattern",
        ),
        (_CLASS + "first-line = 3\n", "queue-class 'vip'.first-line: must be a string, got 3"),
    ],
)
def test_bad_file(tmp_path: Path, text: str, message: str) -> None:
    """
    Each bad waiting-room key or C{[[queue-class]]} table is refused with
    one line naming the file, the table and the key.
    """
    with pytest.raises(UsageError) as raised:
        parse(["--config", write(tmp_path, _HEAD + text)])
    assert message in str(raised.value)
    assert str(raised.value).startswith(str(tmp_path / "gateway.toml"))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'max-sessions = 4\nbackend = ["tcp:127.0.0.1:7000"]\n' + _CLASS,
            "gateway.toml: queue-class: [[queue-class]] tables need a waiting room: queue-size "
            "above 0",
        ),
        (
            "queue-size = 3\nmax-sessions = 10\n"
            '[[backend]]\nname = "big"\nendpoint = "tcp:127.0.0.1:7000"\n'
            '[[backend]]\nname = "small"\nendpoint = "tcp:127.0.0.1:7001"\nmax-sessions = 3\n'
            + _CLASS
            + "reserved = 2\n"
            + _CLASS.replace("vip", "staff")
            + "reserved = 1\n",
            "gateway.toml: queue-class: the classes reserve 3 slots in all, but backend "
            "'small' takes at most 3 sessions (max-sessions): reserve fewer",
        ),
        (
            "demo = true\n" + _CLASS + "reserved = 2\n",
            "gateway.toml: queue-class: the classes reserve 2 slots in all, but each demo "
            "game server takes at most 2 sessions",
        ),
        (
            'queue-size = "10"\nbackend = ["tcp:127.0.0.1:7000"]\n',
            "gateway.toml: queue-size: must be a whole number, got '10'",
        ),
        (
            'queue-size = 3\nbackend = ["tcp:127.0.0.1:7000"]\n',
            "gateway.toml: queue-size: no backend has a session limit, so nobody would ever "
            "wait: give max-sessions (or max-sessions on a [[backend]])",
        ),
        (
            'queue-size = 3\nmax-sessions = 2\nworkers = 2\nbackend = ["tcp:127.0.0.1:7000"]\n',
            "gateway.toml: max-sessions: not with workers above 1 yet",
        ),
    ],
)
def test_cross_checks_in_the_file(tmp_path: Path, text: str, message: str) -> None:
    """
    Classes need a room; the slots all classes reserve must leave one on
    every backend with a limit (the message names the backend); a room
    needs a limit, and one process.
    """
    with pytest.raises(UsageError) as raised:
        parse(["--config", write(tmp_path, text)])
    assert message in str(raised.value)


def test_reserved_below_every_limit_passes(tmp_path: Path) -> None:
    """
    Reserving one slot fewer than the smallest limit is allowed, and a
    backend without a limit does not count.
    """
    text = (
        "queue-size = 3\n"
        '[[backend]]\nendpoint = "tcp:127.0.0.1:7000"\nmax-sessions = 3\n'
        '[[backend]]\nendpoint = "tcp:127.0.0.1:7001"\n' + _CLASS + "reserved = 2\n"
    )
    config = parse(["--config", write(tmp_path, text)])
    assert [spec.reserved for spec in config.queue_classes] == [2]


def test_a_bad_class_stops_twistd(tmp_path: Path) -> None:
    """
    twistd -n gateway with a bad class exits with status 2 and one line
    naming the file and the key, before it listens.
    """
    path = Path(write(tmp_path, _HEAD + _CLASS.replace("10.0.0.0/8", "10.0.0.1/8")))
    result = start_gateway(tmp_path, "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"gateway: error: {path}: queue-class 'vip'.from: '10.0.0.1/8': 10.0.0.1/8 has host "
        "bits set (see: twistd gateway --help)\n"
    )
    assert "listening on" not in result.stdout


def test_classes_sort_stably_by_priority() -> None:
    """
    Classes are stored highest priority first, equals in the file's order.
    """
    raw = [
        RawQueueClass(f"c{index}", {"name": f"c{index}", "priority": p, "from": "10.0.0.0/8"})
        for index, p in enumerate([0, 5, -3, 5, 0, 1000])
    ]
    assert [spec.name for spec in check_queue_classes(raw)] == [
        "c5",
        "c1",
        "c3",
        "c0",
        "c4",
        "c2",
    ]


@pytest.mark.parametrize(
    ("networks", "host", "expected"),
    [
        (["10.0.0.0/8"], "10.1.2.3", True),
        (["10.0.0.0/8"], "11.1.2.3", False),
        (["10.0.0.0/8"], "::ffff:10.1.2.3", True),
        (["10.0.0.0/8"], "::ffff:11.1.2.3", False),
        (["10.0.0.0/8"], "::10.1.2.3", False),
        (["::ffff:0:0/96"], "::ffff:10.1.2.3", True),
        (["2001:db8::/32"], "2001:db8:1::5", True),
        (["2001:db8::/32"], "2001:db9::5", False),
        (["fe80::/10"], "fe80::1%eth0", True),
        (["2001:db8::/32", "192.0.2.7/32"], "192.0.2.7", True),
        (["192.0.2.7/32"], "192.0.2.8", False),
        (["0.0.0.0/0"], None, False),
        (["0.0.0.0/0"], "/run/gw.sock", False),
        (["0.0.0.0/0"], "", False),
        (["::/0"], "10.1.2.3", False),
    ],
)
def test_network_matching(networks: list[str], host: str | None, expected: bool) -> None:
    """
    A class with C{from} takes a client whose address is in one of its
    networks; an IPv4-mapped IPv6 address matches as the IPv4 address it
    carries (and as itself); no address (a UNIX socket) matches none.
    """
    spec = QueueClassSpec(
        name="c", priority=1, networks=tuple(ip_network(net) for net in networks)
    )
    assert spec.matches(host, b"") is expected


def test_first_line_and_both() -> None:
    """
    C{first-line} is searched in the first line (like C{--session-key});
    with C{from} as well, a player must match both.
    """
    line = QueueClassSpec(name="c", priority=1, first_line=re.compile(rb"tier=gold"))
    assert line.matches(None, b"LOGIN bob tier=gold")
    assert line.matches("203.0.113.9", b"LOGIN bob tier=gold")
    assert not line.matches("203.0.113.9", b"LOGIN bob tier=free")
    both = dataclasses.replace(line, networks=(ip_network("10.0.0.0/8"),))
    assert both.matches("10.0.0.1", b"LOGIN bob tier=gold")
    assert not both.matches("10.0.0.1", b"LOGIN bob")
    assert not both.matches("192.0.2.1", b"LOGIN bob tier=gold")
    assert not both.matches(None, b"LOGIN bob tier=gold")


_VALID = re.compile(r"(?:[^{}]|\{\{|\}\}|\{(?:position|length|eta)\})*")
"""What a template is, written independently of the checker: literal text,
doubled braces and the three plain fields."""

_literal = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="{}"),
    max_size=20,
)
_piece = st.one_of(
    _literal,
    st.sampled_from(["{{", "}}", *(f"{{{name}}}" for name in QUEUE_FIELDS)]),
)


@given(st.lists(_piece, min_size=1, max_size=12), st.integers(0, 10**6), st.integers(0, 10**6))
def test_templates_of_fields_and_text_are_accepted(
    pieces: list[str], position: int, length: int
) -> None:
    """
    Any text made of literal text, doubled braces and the three fields
    (within the size bound, not empty) is accepted, and formats with the
    three values.
    """
    text = "".join(pieces)
    if not text or len(text.encode()) > MAX_QUEUE_MESSAGE:
        return
    assert check_queue_message("--queue-message", text) == text
    formatted = text.format(position=position, length=length, eta="?")
    assert "{position}" not in formatted.replace("{{", "")
    expected = re.sub(
        r"\{\{|\}\}|\{(\w+)\}",
        lambda m: {"{{": "{", "}}": "}"}.get(
            m[0], str({"position": position, "length": length, "eta": "?"}.get(m[1] or ""))
        ),
        text,
    )
    assert formatted == expected


_ALPHABET = st.sampled_from(
    ["{", "}", "{{", "}}", "position", "length", "eta", "pos", ":", "!r", ".", "[0]", "0", "x"]
)


_FIELD_LIKE = st.builds(
    "{{{}{}}}".format,
    st.one_of(
        st.sampled_from(QUEUE_FIELDS),
        st.sampled_from(["", "0", "Position", "pos", "eta ", " eta"]),
    ),
    st.sampled_from([":", ":>3", "!r", "!s:", ".real", "[0]", "{", "}", "x"]),
)
"""Text in braces that looks like a field but is not one of the three: a
name with a format spec, conversion, attribute or index, or a wrong name."""


@given(
    st.one_of(
        st.text(max_size=40),
        st.lists(st.one_of(_ALPHABET, st.text(max_size=3)), max_size=15).map("".join),
        st.tuples(st.lists(_piece, max_size=4), _FIELD_LIKE, st.lists(_piece, max_size=4)).map(
            lambda parts: "".join(parts[0]) + parts[1] + "".join(parts[2])
        ),
        st.text(min_size=500, max_size=600),
    )
)
def test_any_other_text_is_rejected_never_crashes(text: str) -> None:
    """
    Whatever the text, the check either accepts it, and then it is a
    template (the independent grammar above, one line, 1 to 512 bytes)
    that formats, or refuses it with a L{ConfigError} naming the option:
    never another exception.
    """
    try:
        checked = check_queue_message("--queue-message", text)
    except ConfigError as error:
        assert str(error).startswith("--queue-message: ")
        assert "\n" not in str(error)
        one_line = not any(unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") for char in text)
        assert not (
            one_line
            and text
            and _VALID.fullmatch(text)
            and len(text.encode()) <= MAX_QUEUE_MESSAGE
        )
    else:
        assert checked == text
        assert _VALID.fullmatch(text)
        assert text and len(text.encode()) <= MAX_QUEUE_MESSAGE
        assert "\r" not in text and "\n" not in text
        text.format(position=1, length=2, eta=3)


def test_gateway_config_defaults_are_the_options() -> None:
    """
    The options' defaults are L{GatewayConfig}'s.
    """
    defaults = GatewayConfig()
    config = parse(BACKEND)
    assert (config.queue_timeout, config.queue_update) == (
        defaults.queue_timeout,
        defaults.queue_update,
    )


def test_reference_example_parses(tmp_path: Path) -> None:
    """
    The two-class example of docs/reference.md's C{[[queue-class]]}
    section is a valid file (with a backend added) and means what the
    section says.
    """
    text = (Path(__file__).resolve().parent.parent / "docs" / "reference.md").read_text()
    section = text.split("### `[[queue-class]]` tables\n", 1)[1]
    example = re.findall(r"```toml\n(.*?)```", section, re.DOTALL)[0]
    config = parse(["--config", write(tmp_path, 'backend = ["tcp:127.0.0.1:7000"]\n' + example)])
    staff, subscribers = config.queue_classes
    assert (staff.name, staff.priority, staff.reserved) == ("staff", 100, 2)
    assert staff.matches("::ffff:10.9.8.7", b"") and not staff.matches("192.0.2.1", b"")
    assert subscribers.matches(None, b"LOGIN bob tier=gold\r\n")
    assert not subscribers.matches(None, b"LOGIN bob tier=free\r\n")
