"""
The documentation kept in step with the code: the reference's tables of
configuration file keys, and the README's two commands.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.configfile import BACKEND_KEYS, FILE_SETTINGS
from gateway.poolconfig import POOL_KEYS, ROUTE_KEYS

ROOT = Path(__file__).resolve().parent.parent


def _section_keys(heading: str) -> list[str]:
    """
    The keys of the table under C{heading} in docs/reference.md.

    @param heading: the section's heading line, without the C{###}.
    @return: the first column's keys, in order.
    """
    text = (ROOT / "docs" / "reference.md").read_text()
    section = text.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([a-z-]+)` \|", section, re.MULTILINE)


@pytest.mark.parametrize(
    ("heading", "keys"),
    [
        ("`[[backend]]` tables", BACKEND_KEYS),
        ("`[pool.NAME]` tables", POOL_KEYS),
        ("`[[route]]` tables", ROUTE_KEYS),
    ],
)
def test_reference_lists_every_table_key(heading: str, keys: object) -> None:
    """
    Each table of docs/reference.md has one row per key the file reader
    accepts in that kind of table, and none it does not.
    """
    assert sorted(_section_keys(heading)) == sorted(keys)  # type: ignore[call-overload]


def test_reference_names_every_top_level_key() -> None:
    """
    Every top-level key of the file is in docs/reference.md, as an option's
    file key or in the top-level section.
    """
    text = (ROOT / "docs" / "reference.md").read_text()
    named = set(re.findall(r"`([a-z-]+)`", text))
    assert set(FILE_SETTINGS) - named - {"pool", "route"} == set()


def test_readme_commands_are_the_first_two() -> None:
    """
    The README's two commands, the demo's (its first C{sh} block) and the
    tests' (the block after the demo's C{curl}/C{nc} one), are still where
    a newcomer looks first (.ci/run checks the test command byte for byte).
    """
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    assert blocks[0].startswith("python3 -m venv .venv && .venv/bin/pip install -q -e . ")
    assert blocks[2].startswith("python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'")
