"""
How a health probe quotes the bytes of its exchange in a failure's reason
(L{gateway.pool.probe.quote_bytes}): as text an operator reads in the log
and on the dashboard, never Python's C{b'...'} notation.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.pool.probe import quote_bytes


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"PONG", '"PONG"'),
        (b"ERR busy\r\n", '"ERR busy\\r\\n"'),
        (b'say "hi" \\ bye\t', '"say \\"hi\\" \\\\ bye\\t"'),
        ("café €".encode(), '"café €"'),
        (b"\x00\x1b[0m\x7f", '"\\x00\\x1b[0m\\x7f"'),
        # Not UTF-8 (a byte alone, a character cut by the quoted length).
        (b"\xff ok \xe2\x82", '"\\xff ok \\xe2\\x82"'),
        ("\u2028".encode(), '"\\u2028"'),
        ("\x85".encode(), '"\\u0085"'),
        (b"", '""'),
    ],
)
def test_examples(data: bytes, shown: str) -> None:
    """
    Printable text shows as it is, in double quotes; line ends, tabs, quotes
    and backslashes as their usual escapes; other control characters and
    bytes that are not UTF-8 as C{\\xNN}, other characters that do not
    print as C{\\uNNNN}.
    """
    assert quote_bytes(data) == shown


@given(st.binary(max_size=64))
def test_any_bytes_give_one_printable_line(data: bytes) -> None:
    """
    Whatever a backend sends, its quotation is one printable line in double
    quotes, without Python's bytes prefix, and different bytes never read
    the same.
    """
    shown = quote_bytes(data)
    assert shown.isprintable()
    assert shown.startswith('"') and shown.endswith('"')
    assert not shown.startswith("b'")
    assert _read_back(shown[1:-1]) == data


_SIMPLE = {"n": b"\n", "r": b"\r", "t": b"\t", '"': b'"', "\\": b"\\"}


def _read_back(quoted: str) -> bytes:
    """
    The bytes a quotation (without its quotes) stands for: C{\\xNN} is one
    byte, C{\\uNNNN}, C{\\UNNNNNNNN} and any other character its UTF-8 encoding.
    """
    found = re.findall(r'\\x[0-9a-f]{2}|\\u[0-9a-f]{4}|\\U[0-9a-f]{8}|\\[nrt"\\]|[^\\]', quoted)
    assert "".join(found) == quoted, "an escape that is not one of these"
    parts = []
    for token in found:
        if token.startswith("\\x"):
            parts.append(bytes([int(token[2:], 16)]))
        elif token.startswith(("\\u", "\\U")):
            parts.append(chr(int(token[2:], 16)).encode())
        elif token.startswith("\\"):
            parts.append(_SIMPLE[token[1]])
        else:
            parts.append(token.encode())
    return b"".join(parts)
