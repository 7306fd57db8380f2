"""
Tests for L{gateway.demo.game}, the Hi-Lo demo game.

Every test is synchronous: players are protocols from one L{HiLoFactory},
connected to L{StringTransport}s, and the factory draws its numbers from a
seeded L{random.Random}.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.testing import EventLoggingObserver, StringTransport

from gateway.demo import SITE_DIR, HiLoFactory
from gateway.demo.game import HIGHEST, LOWEST, HiLoProtocol

SEED = 2024
"""Seed of the factories' random numbers; see L{test_seed_draws_distinct_numbers}."""

BANNER = "Welcome to Hi-Lo, the gateway demo game, on server {server}!"
ASK = "What is your name?"
HELP = [
    "Commands:",
    "  a number  guess the secret number (1 to 100); everyone sees your guess",
    "  say TEXT  chat with everyone on this server",
    "  who       list the players and their wins",
    "  help      show this list",
    "  quit      leave the game",
]
RULES = (
    "I am thinking of a number from 1 to 100. Everyone sees every guess; "
    "whoever hits the number wins the round."
)
NEW_ROUND = "New round: I have picked a new number from 1 to 100."
BAD_NAME = (
    "Sorry, that name will not do. A name is 1 to 16 letters, digits, _ or -, with no spaces."
)


@dataclass
class Player:
    """
    One test player: a connection to a factory, and what it has been sent.

    @ivar protocol: the server side of the connection.
    @ivar transport: the in-memory transport the server writes to.
    """

    protocol: HiLoProtocol
    transport: StringTransport

    @property
    def wire(self) -> IProtocol:
        """
        The server side seen through L{IProtocol}, whose methods are annotated
        (L{LineReceiver<twisted.protocols.basic.LineReceiver>}'s are not).
        """
        return self.protocol

    def send(self, data: bytes | str) -> None:
        """
        Deliver bytes from the player to the server; text gets a LF appended.
        """
        if isinstance(data, str):
            data = data.encode("utf-8") + b"\n"
        self.wire.dataReceived(data)

    def take(self) -> list[str]:
        """
        Return the lines sent to this player since the last call, and forget them.

        Also checks the framing: every line the server sends ends in CRLF.
        """
        # StringTransport is not annotated; these two calls are the only ones.
        data: bytes = self.transport.value()
        self.transport.clear()
        if not data:
            return []
        assert data.endswith(b"\r\n"), data
        lines = data[:-2].split(b"\r\n")
        assert not any(b"\n" in line or b"\r" in line for line in lines), data
        return [line.decode("utf-8") for line in lines]

    def lose(self) -> None:
        """
        End the connection without a C{quit}, as closing the terminal would.
        """
        self.wire.connectionLost(connectionDone)


def make_factory(name: str = "demo-a", seed: int = SEED) -> HiLoFactory:
    """
    Make a game server whose numbers come from a L{random.Random} seeded with C{seed}.
    """
    return HiLoFactory(name, random.Random(seed))


def connect(factory: HiLoFactory) -> Player:
    """
    Connect a new player, who has not chosen a name yet.
    """
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    player = Player(protocol, transport)
    player.wire.makeConnection(transport)
    return player


def join(factory: HiLoFactory, *names: str) -> list[Player]:
    """
    Connect one player per name, each choosing that name, and clear everyone's output.
    """
    players = []
    for name in names:
        player = connect(factory)
        player.send(name)
        players.append(player)
    for player in players:
        player.take()
    return players


def low_and_high(secret: int) -> tuple[int, int]:
    """
    Pick a guess below and one above C{secret}, which must not be 1 or 100.
    """
    assert LOWEST < secret < HIGHEST
    return secret - 1, secret + 1


def test_seed_draws_distinct_numbers() -> None:
    """
    The seed the tests use draws two different numbers, neither at an end of
    the range, so that tests can guess on both sides and tell rounds apart.
    """
    rng = random.Random(SEED)
    first, second = rng.randint(1, 100), rng.randint(1, 100)
    assert first != second
    assert 1 < first < 100 and 1 < second < 100


def test_site_dir() -> None:
    """
    C{SITE_DIR} is an absolute path to the folder holding the demo page.
    """
    assert os.path.isabs(SITE_DIR)
    assert os.path.isfile(os.path.join(SITE_DIR, "index.html"))


def test_banner_first() -> None:
    """
    On connect the server speaks first: a banner naming the game and the
    server, then the name question.
    """
    player = connect(make_factory("demo-b"))
    assert player.take() == [
        "Welcome to Hi-Lo, the gateway demo game, on server demo-b!",
        ASK,
    ]


def test_default_rng() -> None:
    """
    Without an rng, the factory draws its own secret in range.
    """
    factory = HiLoFactory("demo-a")
    assert factory.name == "demo-a"
    assert LOWEST <= factory.secret <= HIGHEST


def test_join_alone() -> None:
    """
    The first player is greeted, told they are alone, given the rules and
    commands, and listed in the lobby with no wins.
    """
    factory = make_factory()
    player = connect(factory)
    player.take()
    player.send("alice")
    assert player.take() == [
        "Hello alice! You are the only player on demo-a so far.",
        RULES,
        *HELP,
    ]
    assert list(factory.players) == ["alice"]
    assert dict(factory.wins) == {"alice": 0}
    assert player.protocol.name == "alice"


def test_join_broadcast() -> None:
    """
    A joining player is told who else is here; everyone already in the lobby
    is told about the newcomer, and the newcomer is not told about themselves.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "Bob")
    carol = connect(factory)
    carol.take()
    carol.send("carol")
    assert carol.take() == ["Hello carol! Also here on demo-a: alice, Bob.", RULES, *HELP]
    assert alice.take() == ["carol joined the lobby."]
    assert bob.take() == ["carol joined the lobby."]
    assert list(factory.players) == ["alice", "Bob", "carol"]


@pytest.mark.parametrize(
    "name",
    [
        "al ice",
        "x" * 17,
        "émile",
        "a!b",
        "a.b",
        "名前",
        "say hi",
    ],
)
def test_bad_name_asked_again(name: str) -> None:
    """
    A name that is not 1 to 16 letters, digits, C{_} or C{-} gets a clear
    message and the question again, and the player does not join.
    """
    factory = make_factory()
    player = connect(factory)
    player.take()
    player.send(name)
    assert player.take() == [BAD_NAME, ASK]
    assert factory.players == ()
    player.send("alice")
    assert player.take()[0] == "Hello alice! You are the only player on demo-a so far."


@pytest.mark.parametrize("name", ["a", "x" * 16, "A_b-9", "007"])
def test_good_names(name: str) -> None:
    """
    Names at the edges of the rules are accepted as typed.
    """
    factory = make_factory()
    player = connect(factory)
    player.send(name)
    assert list(factory.players) == [name]


def test_duplicate_name_ignores_case() -> None:
    """
    A name already in the lobby, in any case, is refused and asked again; the
    player already there hears nothing.
    """
    factory = make_factory()
    [alice] = join(factory, "alice")
    other = connect(factory)
    other.take()
    other.send("ALICE")
    assert other.take() == ["Sorry, someone called ALICE is already here. Pick another name.", ASK]
    assert alice.take() == []
    assert list(factory.players) == ["alice"]
    other.send("alice2")
    assert list(factory.players) == ["alice", "alice2"]
    assert alice.take() == ["alice2 joined the lobby."]


def test_empty_name_asked_again() -> None:
    """
    An empty or blank line at the name prompt just asks again.
    """
    factory = make_factory()
    player = connect(factory)
    player.take()
    player.send(b"\n  \r\n")
    assert player.take() == [ASK, ASK]
    assert factory.players == ()


def test_quit_before_name() -> None:
    """
    C{quit} at the name prompt says goodbye and closes, without joining.
    """
    factory = make_factory()
    [alice] = join(factory, "alice")
    player = connect(factory)
    player.take()
    player.send("quit")
    assert player.take() == ["Goodbye!"]
    assert player.transport.disconnecting
    player.lose()
    assert alice.take() == []
    assert list(factory.players) == ["alice"]


def test_unnamed_player_outside_lobby() -> None:
    """
    A player who has not chosen a name gets no lobby messages, does not show
    up in C{who}, and leaving tells nobody.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    lurker = connect(factory)
    lurker.take()
    low, _ = low_and_high(factory.secret)
    alice.send("say hello")
    alice.send(str(low))
    bob.send("who")
    assert lurker.take() == []
    assert bob.take() == [
        "alice says: hello",
        f"alice guesses {low}: too low",
        "Players on demo-a: alice (0 wins), bob (0 wins)",
    ]
    alice.take()
    lurker.lose()
    assert alice.take() == []
    assert bob.take() == []


def test_guesses_broadcast() -> None:
    """
    A guess is judged and shown to every player, the guesser included.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    low, high = low_and_high(factory.secret)
    alice.send(str(low))
    bob.send(str(high))
    expected = [f"alice guesses {low}: too low", f"bob guesses {high}: too high"]
    assert alice.take() == expected
    assert bob.take() == expected
    assert factory.round_guesses == 2


def test_number_forms() -> None:
    """
    Signs and leading zeros are accepted; the guess is shown as a plain number.
    """
    factory = make_factory()
    [alice] = join(factory, "alice")
    low, high = low_and_high(factory.secret)
    alice.send(f"0{low}")
    alice.send(f"+{high}")
    assert alice.take() == [f"alice guesses {low}: too low", f"alice guesses {high}: too high"]


def test_correct_guess_wins_and_draws_new_number() -> None:
    """
    The correct guess is announced to everyone as a win with the round's
    number of guesses, counts in C{who}, and a new number is drawn: the old
    number is then judged against the new one.
    """
    rng = random.Random(SEED)
    first, second = rng.randint(1, 100), rng.randint(1, 100)
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    assert factory.secret == first
    bob.send(str(first - 1))
    alice.send(str(first))
    expected = [
        f"bob guesses {first - 1}: too low",
        f"alice guesses {first}: correct! alice wins after 2 guesses this round.",
        NEW_ROUND,
    ]
    assert alice.take() == expected
    assert bob.take() == expected
    assert factory.secret == second
    assert factory.round_guesses == 0
    assert dict(factory.wins) == {"alice": 1, "bob": 0}

    bob.send("who")
    assert bob.take() == ["Players on demo-a: alice (1 win), bob (0 wins)"]

    bob.send(str(first))
    verdict = "too low" if first < second else "too high"
    assert alice.take() == [f"bob guesses {first}: {verdict}"]

    bob.send(str(second))
    assert alice.take() == [
        f"bob guesses {second}: correct! bob wins after 2 guesses this round.",
        NEW_ROUND,
    ]


def test_first_guess_wins() -> None:
    """
    A win on the first guess of a round says "1 guess", in the singular.
    """
    factory = make_factory()
    [alice] = join(factory, "alice")
    secret = factory.secret
    alice.send(str(secret))
    assert alice.take() == [
        f"alice guesses {secret}: correct! alice wins after 1 guess this round.",
        NEW_ROUND,
    ]


def test_secrets_cover_the_range() -> None:
    """
    Over many rounds the secret takes every value from 1 to 100, and no other.
    """
    factory = make_factory()
    [alice] = join(factory, "alice")
    seen = set()
    for _ in range(2000):
        seen.add(factory.secret)
        alice.send(str(factory.secret))
    assert seen == set(range(1, 101))
    assert dict(factory.wins) == {"alice": 2000}


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("0", "0 is out of range: guess a number from 1 to 100."),
        ("101", "101 is out of range: guess a number from 1 to 100."),
        ("-5", "-5 is out of range: guess a number from 1 to 100."),
        ("abc", 'I do not understand "abc". Guess a number from 1 to 100, or type help.'),
        ("12.5", 'I do not understand "12.5". Guess a number from 1 to 100, or type help.'),
        ("5_0", 'I do not understand "5_0". Guess a number from 1 to 100, or type help.'),
        ("٥٠", 'I do not understand "٥٠". Guess a number from 1 to 100, or type help.'),
    ],
)
def test_bad_guess_only_to_sender(line: str, reply: str) -> None:
    """
    An out-of-range number or a line that is neither a number nor a command
    gets a message to the sender only, and does not count as a guess.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    secret = factory.secret
    alice.send(line)
    assert alice.take() == [reply]
    assert bob.take() == []
    assert factory.round_guesses == 0
    assert factory.secret == secret


def test_say() -> None:
    """
    C{say TEXT} sends the text to everyone, the speaker included; the command
    word is case-insensitive and may be followed by any whitespace.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    alice.send("say hi there,  bob!")
    bob.send("SAY\tback at you")
    expected = ["alice says: hi there,  bob!", "bob says: back at you"]
    assert alice.take() == expected
    assert bob.take() == expected


def test_say_nothing() -> None:
    """
    C{say} with no text gets a hint to the speaker only.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    alice.send("say")
    alice.send("say   ")
    hint = "Say what? Type say and your message, e.g. say hello"
    assert alice.take() == [hint, hint]
    assert bob.take() == []


def test_say_control_characters_replaced() -> None:
    """
    Control characters in chat are replaced, so that no player can send
    escape sequences to the others' terminals.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    alice.send("say \x1b[2Jboo\x07!")
    assert bob.take() == ["alice says: \ufffd[2Jboo\ufffd!"]


def test_invalid_utf8_replaced() -> None:
    """
    Bytes that are not UTF-8 are decoded with replacement characters rather
    than closing the session; UTF-8 text is passed through.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    alice.send(b"say \xff\xfe h\xc3\xa9\n")
    assert bob.take() == ["alice says: \ufffd\ufffd hé"]
    assert not alice.transport.disconnecting


def test_who_lists_in_join_order() -> None:
    """
    C{who} lists the players in the lobby in the order they joined, with wins,
    to the asker only.
    """
    factory = make_factory()
    zed, amy = join(factory, "zed", "Amy")
    amy.send("WHO")
    assert amy.take() == ["Players on demo-a: zed (0 wins), Amy (0 wins)"]
    assert zed.take() == []


def test_help() -> None:
    """
    C{help} lists the commands to the asker only.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    alice.send("help")
    assert alice.take() == HELP
    assert bob.take() == []


def test_empty_lines_ignored() -> None:
    """
    Empty and blank lines in the lobby get no reply and tell nobody anything.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    alice.send(b"\n\r\n   \r\n\t\n")
    assert alice.take() == []
    assert bob.take() == []
    assert not alice.transport.disconnecting


def test_quit() -> None:
    """
    C{quit} says goodbye, closes the connection (after the queued output),
    removes the player and tells the others; the later C{connectionLost}
    tells nobody a second time.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    alice.send("quit")
    assert alice.take() == ["Goodbye, alice! Thanks for playing."]
    assert alice.transport.disconnecting
    assert list(factory.players) == ["bob"]
    assert bob.take() == ["alice left the lobby."]
    alice.lose()
    assert bob.take() == []
    assert list(factory.players) == ["bob"]


def test_end_of_input_answers_then_closes() -> None:
    """
    A player whose client half-closes after its last lines (C{nc -N}) gets
    the replies to those lines, then the connection is closed and the others
    see them leave.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    low, _ = low_and_high(factory.secret)
    alice.send(str(low))
    alice.protocol.readConnectionLost()
    assert alice.take() == [f"alice guesses {low}: too low"]
    assert alice.transport.disconnecting
    assert list(factory.players) == ["bob"]
    assert bob.take() == [f"alice guesses {low}: too low", "alice left the lobby (end of input)."]


def test_lines_after_quit_ignored() -> None:
    """
    Lines that arrive after C{quit}, in the same read or later, do nothing.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    alice.send(b"quit\nwho\nsay still here\n")
    alice.send(b"help\n50\nsay and here\n")
    assert alice.take() == ["Goodbye, alice! Thanks for playing."]
    assert bob.take() == ["alice left the lobby."]


def test_connection_lost_leaves() -> None:
    """
    A connection lost without C{quit} removes the player, tells the others,
    and frees the name for someone else.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    alice.lose()
    assert list(factory.players) == ["bob"]
    assert dict(factory.wins) == {"bob": 0}
    assert bob.take() == ["alice left the lobby (connection lost)."]
    assert alice.take() == []
    join(factory, "Alice")
    assert list(factory.players) == ["bob", "Alice"]


@pytest.mark.parametrize("end", [b"\n", b"\r\n"])
def test_line_ends(end: bytes) -> None:
    """
    LF and CRLF line ends both work, and the CR is not part of the line.
    """
    factory = make_factory()
    player = connect(factory)
    player.take()
    low, _ = low_and_high(factory.secret)
    player.send(b"alice" + end + str(low).encode() + end + b"who" + end)
    assert list(factory.players) == ["alice"]
    assert player.take()[-2:] == [
        f"alice guesses {low}: too low",
        "Players on demo-a: alice (0 wins)",
    ]


def test_byte_at_a_time() -> None:
    """
    Input split into single bytes, with mixed line ends, is put back together
    into lines.
    """
    factory = make_factory()
    player = connect(factory)
    player.take()
    for byte in b"alice\r\nsay hi\nwho\r\n":
        player.send(bytes([byte]))
    assert player.take()[-2:] == ["alice says: hi", "Players on demo-a: alice (0 wins)"]


def test_longest_line_accepted() -> None:
    """
    A line of exactly C{MAX_LENGTH} bytes, counting a trailing CR, is accepted.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    text = "x" * (HiLoProtocol.MAX_LENGTH - len("say ") - 1)
    alice.send(f"say {text}\r\n".encode())
    assert bob.take() == [f"alice says: {text}"]
    assert not alice.transport.disconnecting


@pytest.mark.parametrize("end", [b"", b"\n"])
def test_too_long_line(end: bytes) -> None:
    """
    A line longer than C{MAX_LENGTH}, finished or not, gets a short error and
    the connection is closed; a player in the lobby leaves it at once.
    """
    factory = make_factory()
    alice, bob = join(factory, "alice", "bob")
    alice.send(b"say " + b"x" * HiLoProtocol.MAX_LENGTH + end)
    assert alice.take() == ["Line too long (the limit is 512 bytes). Goodbye."]
    assert alice.transport.disconnecting
    assert list(factory.players) == ["bob"]
    assert bob.take() == ["alice left the lobby (line too long)."]
    alice.send(b"x" * 1000)
    alice.lose()
    assert alice.take() == []
    assert bob.take() == []


def test_too_long_name() -> None:
    """
    An over-long line at the name prompt is refused the same way, and tells
    the lobby nothing.
    """
    factory = make_factory()
    [alice] = join(factory, "alice")
    player = connect(factory)
    player.take()
    player.send(b"n" * 2000)
    assert player.take() == ["Line too long (the limit is 512 bytes). Goodbye."]
    assert player.transport.disconnecting
    assert alice.take() == []


def test_servers_are_separate() -> None:
    """
    Two factories are two lobbies: players on one never hear the other.
    """
    demo_a, demo_b = make_factory("demo-a"), make_factory("demo-b")
    [alice] = join(demo_a, "alice")
    [bob] = join(demo_b, "alice")
    bob.send("say hi")
    assert alice.take() == []
    assert bob.take() == ["alice says: hi"]


def test_logs_joins_wins_and_leaves(log_events: EventLoggingObserver) -> None:
    """
    Joins, wins and leaves are logged with named fields; guesses and chat are not.
    """
    factory = make_factory()
    [alice] = join(factory, "alice")
    alice.send("say hi")
    alice.send(str(factory.secret))
    alice.send("quit")
    events = [
        {key: event.get(key) for key in ("server", "player", "guesses", "why", "count")}
        for event in log_events
        if event.get("log_namespace", "").startswith("gateway.demo.game")
    ]
    assert events == [
        {"server": "demo-a", "player": "alice", "guesses": None, "why": None, "count": 1},
        {"server": "demo-a", "player": "alice", "guesses": 1, "why": None, "count": None},
        {"server": "demo-a", "player": "alice", "guesses": None, "why": "quit", "count": 0},
    ]


_lines = st.one_of(
    st.integers(min_value=-3, max_value=104).map(str),
    st.just("secret"),
    st.sampled_from(["abc", "12.5", "", "who", "say gg"]),
)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    count=st.integers(min_value=1, max_value=4),
    moves=st.lists(st.tuples(st.integers(min_value=0, max_value=3), _lines), max_size=40),
)
def test_only_correct_guesses_win(seed: int, count: int, moves: list[tuple[int, str]]) -> None:
    """
    For any sequence of lines from several players, exactly the guesses equal
    to the secret at that moment win (each win credited to its guesser), every
    valid guess is shown to every player, invalid ones to the sender only, no
    win count is ever negative, and the secret is drawn from the factory's rng,
    in 1 to 100, once at the start and once after each win (and only then).
    """
    model = random.Random(seed)
    factory = make_factory(seed=seed)
    assert factory.secret == model.randint(1, 100)
    names = [f"p{index}" for index in range(count)]
    players = join(factory, *names)
    expected_wins = dict.fromkeys(names, 0)
    guesses = 0
    for index, line in moves:
        player, name = players[index % count], names[index % count]
        secret = factory.secret
        assert LOWEST <= secret <= HIGHEST
        if line == "secret":
            line = str(secret)
        player.send(line)
        heard = [other.take() for other in players]
        others = [
            lines for other, lines in zip(players, heard, strict=True) if other is not player
        ]
        mine = heard[index % count]
        won = False
        if line.lstrip("-").isdigit() and LOWEST <= int(line) <= HIGHEST:
            guesses += 1
            number = int(line)
            if number == secret:
                expected_wins[name] += 1
                expected = [
                    f"{name} guesses {number}: correct! {name} wins after "
                    f"{guesses} guess{'' if guesses == 1 else 'es'} this round.",
                    NEW_ROUND,
                ]
                guesses = 0
                won = True
                assert factory.secret == model.randint(1, 100)
            else:
                verdict = "too low" if number < secret else "too high"
                expected = [f"{name} guesses {number}: {verdict}"]
            assert mine == expected
            assert all(lines == expected for lines in others)
        elif line == "say gg":
            assert mine == [f"{name} says: gg"]
            assert all(lines == [f"{name} says: gg"] for lines in others)
        else:
            assert all(lines == [] for lines in others)
            assert len(mine) == (0 if line == "" else 1)
        if not won:
            assert factory.secret == secret
        assert factory.round_guesses == guesses
        assert dict(factory.wins) == expected_wins
        assert all(wins >= 0 for wins in factory.wins.values())
    assert LOWEST <= factory.secret <= HIGHEST
