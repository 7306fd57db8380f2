"""
Hi-Lo, the line-based multi-player game that C{twistd -n gateway --demo} runs
in-process as its game backends.

Everyone connected to one server shares a lobby and a secret number from 1 to
100.  Players take guesses in any order; every guess is shown to everyone with
"too low" or "too high", and whoever hits the number wins the round, after
which a new number is drawn.

Wire format (what C{nc localhost 8080} shows):

  - Lines of UTF-8 text.  The server ends each line with C{\\r\\n}; it accepts
    C{\\n} or C{\\r\\n} from the client, and decodes with C{errors="replace"}
    so that bad bytes never close a session.
  - The server speaks first: a banner line naming the game and the server
    (C{Welcome to Hi-Lo, the gateway demo game, on server demo-a!}), then
    C{What is your name?}.  A name is 1 to 16 letters, digits, C{_} or C{-},
    unique on the server ignoring case; until a good one arrives the question
    is asked again.  A player without a name is not in the lobby: they get no
    lobby messages and do not show up in C{who}.
  - In the lobby: a bare number is a guess; C{say TEXT} chats; C{who} lists the
    players with their wins; C{help} lists the commands; C{quit} says goodbye
    and closes.  Empty lines are ignored.
  - A line longer than L{HiLoProtocol.MAX_LENGTH} bytes gets one error line and
    the connection is closed.

Nothing here reads the clock or the global reactor, so the tests drive it with
L{twisted.internet.testing.StringTransport} alone.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

__all__ = [
    "HIGHEST",
    "LOWEST",
    "HiLoFactory",
    "HiLoProtocol",
]

LOWEST = 1
"""The smallest secret number."""

HIGHEST = 100
"""The largest secret number."""

_NAME = re.compile(r"[A-Za-z0-9_-]{1,16}")
# ASCII digits only: int() alone would also take "٥٠", "5_0" and " 5 ".
_NUMBER = re.compile(r"[+-]?[0-9]+")

_NAME_QUESTION = "What is your name?"
_NAME_RULES = "A name is 1 to 16 letters, digits, _ or -, with no spaces."

_HELP = (
    "Commands:",
    f"  a number  guess the secret number ({LOWEST} to {HIGHEST}); everyone sees your guess",
    "  say TEXT  chat with everyone on this server",
    "  who       list the players and their wins",
    "  help      show this list",
    "  quit      leave the game",
)

_Stage = Literal["naming", "playing", "gone"]
"""Where a connection is: choosing a name, in the lobby, or on its way out."""


def _printable(text: str) -> str:
    """
    Make a player's text safe to show on other players' terminals.

    Control characters (escape sequences, bells, backspaces) are replaced, so
    that one player cannot redraw or beep another player's terminal.

    @param text: decoded text from a player.
    @return: the text with each control character replaced by U+FFFD, and tabs
        by spaces.
    """
    return "".join(
        " " if char == "\t" else "\ufffd" if unicodedata.category(char) == "Cc" else char
        for char in text
    )


def _count(count: int, one: str, many: str) -> str:
    """
    Spell out a count with its noun, e.g. C{1 win} or C{3 wins}.
    """
    return f"{count} {one if count == 1 else many}"


@implementer(IHalfCloseableProtocol)
class HiLoProtocol(LineReceiver):
    """
    One player's connection: turns lines into lobby actions on its factory.

    @cvar MAX_LENGTH: the longest line accepted, in bytes, counting a trailing
        C{\\r}.
    """

    # Split on LF alone and strip a trailing CR ourselves, so that both nc
    # (LF) and telnet-style clients (CRLF) work; replies always use CRLF.
    delimiter = b"\n"
    MAX_LENGTH = 512

    factory: HiLoFactory

    def __init__(self, factory: HiLoFactory) -> None:
        """
        @param factory: the lobby this connection plays in.
        """
        self.factory = factory
        self._stage: _Stage = "naming"
        self._name: str | None = None

    @property
    def name(self) -> str | None:
        """
        The player's name once they have joined the lobby, else L{None}.
        """
        return self._name

    def send_line(self, text: str) -> None:
        """
        Send one line of text to this player.

        @param text: the line, without a line end.
        """
        if self.transport is not None:
            self.transport.write(text.encode("utf-8") + b"\r\n")

    @override
    def connectionMade(self) -> None:
        """
        Greet the player with the banner and ask for a name.
        """
        self.send_line(f"Welcome to Hi-Lo, the gateway demo game, on server {self.factory.name}!")
        self.send_line(_NAME_QUESTION)

    @override
    def lineReceived(self, line: bytes) -> None:
        """
        Handle one line: a name while naming, else a lobby command.
        """
        if self._stage == "gone":
            # Lines that arrive after quit (in the same read, or before the
            # transport stops reading) must not act in the lobby any more.
            return
        # strip() also takes off the CR of a CRLF line end.
        text = line.decode("utf-8", errors="replace").strip()
        if self._stage == "naming":
            self._choose_name(text)
        elif text:
            self._command(text)

    def _choose_name(self, text: str) -> None:
        """
        Join the lobby under C{text}, or say why not and ask again.
        """
        if not text:
            self.send_line(_NAME_QUESTION)
            return
        if text.lower() == "quit":
            self._stage = "gone"
            self.send_line("Goodbye!")
            self._close()
            return
        if _NAME.fullmatch(text) is None:
            self.send_line(f"Sorry, that name will not do. {_NAME_RULES}")
            self.send_line(_NAME_QUESTION)
            return
        if not self.factory.join(self, text):
            self.send_line(f"Sorry, someone called {text} is already here. Pick another name.")
            self.send_line(_NAME_QUESTION)
            return
        self._stage = "playing"
        self._name = text

    def _command(self, text: str) -> None:
        """
        Act on one non-empty line from a player in the lobby.

        This is the one dispatch point for lobby commands.
        """
        # Split at the first run of whitespace, so "say<TAB>hi" works too.
        first, *more = text.split(maxsplit=1)
        command = first.lower()
        rest = more[0] if more else ""
        if command == "say":
            message = _printable(rest)
            if message:
                self.factory.say(self, message)
            else:
                self.send_line("Say what? Type say and your message, e.g. say hello")
        elif command == "who":
            self.send_line(self.factory.who_line())
        elif command == "help":
            for help_line in _HELP:
                self.send_line(help_line)
        elif command == "quit":
            self.send_line(f"Goodbye, {self._name}! Thanks for playing.")
            self._leave(None)
            self._close()
        elif _NUMBER.fullmatch(text) is not None:
            number = int(text)
            if LOWEST <= number <= HIGHEST:
                self.factory.guess(self, number)
            else:
                self.send_line(
                    f"{number} is out of range: guess a number from {LOWEST} to {HIGHEST}."
                )
        else:
            self.send_line(
                f'I do not understand "{_printable(text)}". '
                f"Guess a number from {LOWEST} to {HIGHEST}, or type help."
            )

    def _leave(self, reason: str | None) -> None:
        """
        Leave the lobby, once, telling the others why (see L{HiLoFactory.leave}).
        """
        was_playing = self._stage == "playing"
        self._stage = "gone"
        if was_playing:
            self.factory.leave(self, reason)

    def _close(self) -> None:
        """
        Close the connection after the queued output has been written.
        """
        if self.transport is not None:
            self.transport.loseConnection()

    @override
    def lineLengthExceeded(self, line: bytes) -> None:
        """
        Refuse an over-long line with one short error, then close.
        """
        if self._stage == "gone":
            return
        self.send_line(f"Line too long (the limit is {self.MAX_LENGTH} bytes). Goodbye.")
        self._leave("line too long")
        self._close()

    def readConnectionLost(self) -> None:
        """
        The player ended their side (C{printf 'bob\\n50\\n' | nc -N}): the lines
        they sent were handled, so send the replies, then close.
        """
        self._leave("end of input")
        self._close()

    def writeConnectionLost(self) -> None:
        """
        Our side was shut down; nothing to do.
        """

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Leave the lobby if the player had not already quit.
        """
        self._leave("connection lost")


@dataclass(slots=True)
class _Seat:
    """
    A player in the lobby, as the lobby sees them.

    @ivar name: the name as the player typed it.
    @ivar player: their connection.
    @ivar wins: rounds won since they joined.
    """

    name: str
    player: HiLoProtocol
    wins: int = 0


class HiLoFactory(ServerFactory[HiLoProtocol]):
    """
    One Hi-Lo server: its lobby of players, the secret number and the scores.

    Players are kept in the order they joined, under their name as typed;
    uniqueness ignores case.  A player's wins are dropped when they leave, so
    the scoreboard cannot grow with every name ever used.
    """

    noisy = False

    _log = Logger()

    def __init__(self, name: str, rng: random.Random | None = None) -> None:
        """
        @param name: the server's name, shown in the banner (e.g. C{demo-a}),
            so a player sees which backend they reached.
        @param rng: where secret numbers come from; a fresh, randomly seeded
            L{random.Random} if not given.  Tests pass a seeded one.
        """
        self._name = name
        self._rng = rng if rng is not None else random.Random()
        # Keyed by the casefolded name; dicts keep the joining order.
        self._seats: dict[str, _Seat] = {}
        self._round_guesses = 0
        self._secret = self._draw()

    @property
    def name(self) -> str:
        """
        The server's name, as shown in the banner.
        """
        return self._name

    @property
    def secret(self) -> int:
        """
        The number to guess this round, from L{LOWEST} to L{HIGHEST}.
        """
        return self._secret

    @property
    def round_guesses(self) -> int:
        """
        How many valid guesses have been made since the current number was drawn.
        """
        return self._round_guesses

    @property
    def players(self) -> tuple[str, ...]:
        """
        The names of the players in the lobby, in the order they joined.
        """
        return tuple(seat.name for seat in self._seats.values())

    @property
    def wins(self) -> Mapping[str, int]:
        """
        Rounds won by each player in the lobby, by name (a read-only copy).
        """
        return MappingProxyType({seat.name: seat.wins for seat in self._seats.values()})

    def _draw(self) -> int:
        """
        Draw a new secret number.
        """
        return self._rng.randint(LOWEST, HIGHEST)

    def _seat_of(self, player: HiLoProtocol) -> _Seat | None:
        """
        Find a connection's seat in the lobby.

        @return: the seat, or L{None} if that connection is not in the lobby.
        """
        name = player.name
        seat = None if name is None else self._seats.get(name.casefold())
        return seat if seat is not None and seat.player is player else None

    @override
    def buildProtocol(self, addr: IAddress | None) -> HiLoProtocol:
        """
        Make the connection for one new player.
        """
        return HiLoProtocol(self)

    def broadcast(self, text: str) -> None:
        """
        Send a line to every player in the lobby.

        @param text: the line.
        """
        for seat in self._seats.values():
            seat.player.send_line(text)

    def join(self, player: HiLoProtocol, name: str) -> bool:
        """
        Add a player to the lobby, greet them and tell the others.

        @param player: the connection joining.
        @param name: a valid name (see L{HiLoProtocol}).
        @return: C{False}, and nothing changed, if the name is taken (ignoring
            case); C{True} once the player has joined.
        """
        key = name.casefold()
        if key in self._seats:
            return False
        others = self.players
        self.broadcast(f"{name} joined the lobby.")
        self._seats[key] = _Seat(name, player)
        if others:
            player.send_line(f"Hello {name}! Also here on {self._name}: {', '.join(others)}.")
        else:
            player.send_line(f"Hello {name}! You are the only player on {self._name} so far.")
        player.send_line(
            f"I am thinking of a number from {LOWEST} to {HIGHEST}. Everyone sees every guess; "
            "whoever hits the number wins the round."
        )
        for help_line in _HELP:
            player.send_line(help_line)
        self._log.info(
            "{server}: {player} joined; {count} playing",
            server=self._name,
            player=name,
            count=len(self._seats),
        )
        return True

    def leave(self, player: HiLoProtocol, reason: str | None) -> None:
        """
        Remove a player from the lobby and tell the others.

        @param player: the connection leaving; nothing happens if it is not
            in the lobby.
        @param reason: why, if not by C{quit} (e.g. C{connection lost}).
        """
        seat = self._seat_of(player)
        if seat is None:
            return
        del self._seats[seat.name.casefold()]
        if reason is None:
            self.broadcast(f"{seat.name} left the lobby.")
        else:
            self.broadcast(f"{seat.name} left the lobby ({reason}).")
        self._log.info(
            "{server}: {player} left ({why}); {count} playing",
            server=self._name,
            player=seat.name,
            why=reason or "quit",
            count=len(self._seats),
        )

    def guess(self, player: HiLoProtocol, number: int) -> None:
        """
        Judge a guess, tell everyone, and start a new round if it was right.

        @param player: the player guessing; nothing happens if they are not in
            the lobby.
        @param number: the guess, from L{LOWEST} to L{HIGHEST}.
        """
        seat = self._seat_of(player)
        if seat is None:
            return
        self._round_guesses += 1
        if number < self._secret:
            self.broadcast(f"{seat.name} guesses {number}: too low")
        elif number > self._secret:
            self.broadcast(f"{seat.name} guesses {number}: too high")
        else:
            seat.wins += 1
            guesses = self._round_guesses
            self.broadcast(
                f"{seat.name} guesses {number}: correct! {seat.name} wins after "
                f"{_count(guesses, 'guess', 'guesses')} this round."
            )
            self._log.info(
                "{server}: {player} won a round after {guesses} guesses",
                server=self._name,
                player=seat.name,
                guesses=guesses,
            )
            self._secret = self._draw()
            self._round_guesses = 0
            self.broadcast(f"New round: I have picked a new number from {LOWEST} to {HIGHEST}.")

    def say(self, player: HiLoProtocol, text: str) -> None:
        """
        Send a chat message from a player to everyone, the player included.

        @param player: the player speaking; nothing happens if they are not in
            the lobby.
        @param text: the message, already made printable.
        """
        seat = self._seat_of(player)
        if seat is not None:
            self.broadcast(f"{seat.name} says: {text}")

    def who_line(self) -> str:
        """
        Describe the lobby in one line: each player with their wins.
        """
        entries = [
            f"{seat.name} ({_count(seat.wins, 'win', 'wins')})" for seat in self._seats.values()
        ]
        return f"Players on {self._name}: {', '.join(entries)}"
