"""
C{--log-format json}: the gateway's own log as JSON lines with flat fields,
for log shippers.

Each event is one line holding one JSON object:

  - C{time}: when the event happened, ISO 8601 in UTC with microseconds
    (C{2026-05-04T10:11:12.345678Z});
  - C{level}: C{debug}, C{info}, C{warn}, C{error} or C{critical};
  - C{namespace}: the logger's namespace (C{gateway.access} for access
    events, C{log_legacy} for Twisted's old-style messages);
  - C{message}: the event's text, as the text log would show it;
  - C{traceback}: the failure's traceback, for an event that carries one
    (a worker's traceback is part of its C{message});
  - C{worker}: the worker's number, for an event a worker process logged;
  - then the event's own fields (C{backend}, C{peer}, C{reason}, ...):
    strings, numbers, booleans and nulls as they are, lists of those as
    lists, an exception as its text; other values, Twisted's internal
    C{log_*} keys and fields named like the ones above are left out.

Writing JSON (C{json.dumps} escapes line breaks) keeps one event on one
line whatever its text holds.  L{use_json_log} installs the observer in
twistd or twist, in place of their own text (or Twisted's internal JSON)
observer, writing once per reactor turn (L{gateway.ops.twistdlog}).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import MutableMapping
from typing import IO, Any

from twisted.application.service import IService
from twisted.logger import FileLogObserver, formatEvent

from gateway.ops.twistdlog import use_log

__all__ = ["FLAT_FIELDS", "flat_event", "json_line", "use_json_log"]

FLAT_FIELDS = ("time", "level", "namespace", "message", "traceback", "worker")
"""The fields every line has (C{traceback} and C{worker} when they apply),
which an event's own fields of the same names never replace."""

_LEGACY = frozenset({"message", "system", "time", "isError", "format", "why", "failure"})
"""Keys Twisted's old-style log adds to an event (C{log_legacy}): their
content is in C{message} already."""

_PLAIN = (str, int, float, bool, type(None))


def _iso_time(value: object) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _plain(value: object) -> object:
    """
    C{value} as JSON can hold it, or C{_PLAIN} itself for a value to leave out.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        items = [_plain(item) for item in value]
        return _PLAIN if any(item is _PLAIN or isinstance(item, list) for item in items) else items
    if isinstance(value, BaseException):
        return str(value)
    return _PLAIN


def flat_event(event: dict[str, Any]) -> dict[str, object]:
    """
    The flat record of a log event (see the module's docstring).
    """
    level = getattr(event.get("log_level"), "name", None)
    namespace = event.get("log_namespace")
    record: dict[str, object] = {
        "time": _iso_time(event.get("log_time")),
        "level": level if isinstance(level, str) else None,
        "namespace": namespace if isinstance(namespace, str) else None,
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # noqa: BLE001 - a log line must not fail over a bad failure
            record["traceback"] = repr(failure)
    worker = event.get("log_worker")
    if isinstance(worker, int):
        record["worker"] = worker
    legacy = namespace == "log_legacy"
    for key, value in event.items():
        if (
            not isinstance(key, str)
            or key.startswith("log_")
            or key in FLAT_FIELDS
            or (legacy and key in _LEGACY)
        ):
            continue
        plain = _plain(value)
        if plain is not _PLAIN:
            record[key] = plain
    return record


def json_line(event: dict[str, Any]) -> str:
    """
    One log event as a JSON line (with its line feed).
    """
    return json.dumps(flat_event(event), separators=(",", ":"), allow_nan=False) + "\n"


def json_observer(stream: IO[str]) -> FileLogObserver:
    """
    An observer that writes every event to C{stream} as a JSON line (and
    flushes, as Twisted's own file observers do).
    """
    return FileLogObserver(stream, json_line)


def use_json_log(
    service: IService, runner: MutableMapping[str, Any] | None, reactor: Any
) -> IService:
    """
    Have the program running C{service} write its log as JSON lines, once
    per reactor turn (L{gateway.ops.twistdlog.use_log}).

    @param runner: the options of the program that called C{makeService}:
        twistd's, or twist's; with neither, nothing changes.
    @param reactor: the reactor the program runs.
    @return: the service to give that program.
    """
    return use_log(service, runner, json_line, reactor)
