"""The agent protocol v1 on the wire, the agent's side: encode what an agent sends,
decode what the hub sends.

A small, self-contained mirror of the hub's table (``supervisor._notify.MESSAGE_KINDS``),
so an agent starts without importing the hub. ``tests/test_agents.py`` checks that every
record this module encodes parses with ``supervisor._notify.parse_notify`` and that every
hub-to-agent record ``supervisor._notify.encode`` makes decodes here, so the two cannot
drift. ``docs/agent-protocol.md`` describes the protocol for agents in any language.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeAlias

__all__ = [
    "MAX_MESSAGE",
    "NOTIFY_FD_ENV",
    "PROTOCOL_VERSION",
    "RESERVED_STATUSES",
    "TO_AGENT_WORDS",
    "TO_HUB_WORDS",
    "Ack",
    "Assign",
    "FromHub",
    "Ping",
    "Stop",
    "WireError",
    "decode",
    "fail",
    "handback",
    "heartbeat",
    "hello",
    "progress",
    "ready",
    "result",
    "status",
    "submit",
]

JSON: TypeAlias = Any
"""Any value ``json.dumps`` takes: None, bool, int, float, str, list, dict."""

PROTOCOL_VERSION = 1
"""The protocol version these agents speak (``HELLO=1``)."""

MAX_MESSAGE = 65536
"""The largest record, in bytes, either way."""

NOTIFY_FD_ENV = "HUBVISOR_NOTIFY_FD"
"""The environment variable holding the agent's end of the channel."""

TO_HUB_WORDS = frozenset(
    {"READY", "HEARTBEAT", "STATUS", "HELLO", "PROGRESS", "RESULT", "FAIL", "HANDBACK", "SUBMIT"}
)
"""The words an agent may send."""

TO_AGENT_WORDS = frozenset({"PING", "ASSIGN", "ACK", "STOP"})
"""The words the hub sends."""

RESERVED_STATUSES = frozenset({"starting", "hung", "stopping", "stopped", "crashed"})
"""Statuses only the hub sets; ``STATUS=<one of these>`` is refused."""

_STATUS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_ITEM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class WireError(ValueError):
    """A record that cannot be sent or was not understood; the text says why."""


# --------------------------------------------------------------------------------------
# Agent -> hub


def _record(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise WireError(f"{text[:16]}... is {len(data)} bytes, over the {MAX_MESSAGE}-byte limit")
    if any(b < 0x20 or b == 0x7F for b in data):  # UTF-8 multibyte sequences are >= 0x80
        raise WireError(f"control characters in {text[:64]!r}")
    return data


def _dumps(value: JSON) -> str:
    try:
        # Compact, ASCII-only (\\uXXXX escapes), and no NaN/Infinity (not JSON).
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WireError(f"not JSON: {exc}") from None


def _fenced(word: str, item: str, attempt: int, **fields: JSON) -> bytes:
    _check_fence(word, item, attempt)
    return _record(f"{word}={_dumps({'item': item, 'attempt': attempt, **fields})}")


def _check_fence(word: str, item: object, attempt: object) -> None:
    if not isinstance(item, str) or not _ITEM_ID_RE.match(item):
        raise WireError(f"{word}: bad item id {item!r:.64}")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise WireError(f"{word}: attempt must be an integer >= 1, got {attempt!r:.64}")


def hello(version: int = PROTOCOL_VERSION) -> bytes:
    """``HELLO=<version>``: a work-taking agent's first record."""
    return _record(f"HELLO={version:d}")


def ready() -> bytes:
    """``READY``: the agent is up and takes work."""
    return b"READY"


def heartbeat() -> bytes:
    """``HEARTBEAT``: the agent is alive (the answer to ``PING``)."""
    return b"HEARTBEAT"


def status(word: str) -> bytes:
    """``STATUS=<word>``, e.g. ``status("busy")``."""
    if not _STATUS_RE.match(word) or word in RESERVED_STATUSES:
        raise WireError(
            f"bad status {word[:64]!r}: 1-32 of a-z, 0-9, '_', '-' starting with a letter, "
            f"not one of {sorted(RESERVED_STATUSES)}"
        )
    return _record(f"STATUS={word}")


def progress(item: str, attempt: int, value: JSON, checkpoint: JSON = None) -> bytes:
    """``PROGRESS=``: progress of the held item and the checkpoint its next attempt gets."""
    return _fenced("PROGRESS", item, attempt, progress=value, checkpoint=checkpoint)


def result(item: str, attempt: int, value: JSON) -> bytes:
    """``RESULT=``: the held item is done."""
    return _fenced("RESULT", item, attempt, result=value)


def fail(item: str, attempt: int, error: str, *, retry: bool) -> bytes:
    """``FAIL=``: the held item failed; ``retry=False`` makes the failure final."""
    return _fenced("FAIL", item, attempt, error=str(error), retry=bool(retry))


def handback(item: str, attempt: int) -> bytes:
    """``HANDBACK=``: give the held item back unfinished (no attempt spent)."""
    return _fenced("HANDBACK", item, attempt)


def submit(agent_type: str, payload: JSON) -> bytes:
    """``SUBMIT=``: new work for agents of ``agent_type``."""
    if not isinstance(agent_type, str) or not _TYPE_RE.match(agent_type):
        raise WireError(f"SUBMIT: bad agent type {agent_type!r:.64}")
    return _record(f"SUBMIT={_dumps({'type': agent_type, 'payload': payload})}")


# --------------------------------------------------------------------------------------
# Hub -> agent


class Ping:
    """``PING``: answer with ``HEARTBEAT``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Ping()"


class Stop:
    """``STOP``: finish the held item within the shutdown timeout or hand it back, then
    exit 0."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Stop()"


class Assign:
    """``ASSIGN=``: an item for the agent."""

    __slots__ = ("attempt", "checkpoint", "item", "payload", "type")

    def __init__(self, item: str, attempt: int, type: str, payload: JSON, checkpoint: JSON) -> None:
        self.item = item
        self.attempt = attempt
        self.type = type
        self.payload = payload
        self.checkpoint = checkpoint

    def __repr__(self) -> str:
        return f"Assign(item={self.item!r}, attempt={self.attempt}, type={self.type!r})"


class Ack:
    """``ACK=``: whether the hub took the agent's RESULT, FAIL or HANDBACK."""

    __slots__ = ("accepted", "attempt", "item", "reason")

    def __init__(self, item: str, attempt: int, accepted: bool, reason: str) -> None:
        self.item = item
        self.attempt = attempt
        self.accepted = accepted
        self.reason = reason

    def __repr__(self) -> str:
        return f"Ack(item={self.item!r}, attempt={self.attempt}, accepted={self.accepted})"


FromHub: TypeAlias = Ping | Stop | Assign | Ack
"""A decoded hub-to-agent message."""


def decode(data: bytes) -> FromHub:
    """Decode one record from the hub.

    Raises:
        WireError: empty, too long, not UTF-8, control characters, unknown, or bad fields.
    """
    if len(data) > MAX_MESSAGE:
        raise WireError(f"record of {len(data)} bytes is over {MAX_MESSAGE}")
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise WireError("empty record")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"record is not UTF-8: {data[:64]!r}") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise WireError(f"record has control characters: {text[:64]!r}")
    if text == "PING":
        return Ping()
    if text == "STOP":
        return Stop()
    word, eq, rest = text.partition("=")
    if eq and word == "ASSIGN":
        obj = _object(word, rest)
        _check_fence(word, obj.get("item"), obj.get("attempt"))
        agent_type = obj.get("type")
        if not isinstance(agent_type, str) or not _TYPE_RE.match(agent_type):
            raise WireError(f"ASSIGN: bad agent type {agent_type!r:.64}")
        return Assign(
            obj["item"], obj["attempt"], agent_type, obj.get("payload"), obj.get("checkpoint")
        )
    if eq and word == "ACK":
        obj = _object(word, rest)
        _check_fence(word, obj.get("item"), obj.get("attempt"))
        accepted = obj.get("accepted")
        if not isinstance(accepted, bool):
            raise WireError(f"ACK: 'accepted' must be true or false, got {accepted!r:.64}")
        reason = obj.get("reason", "")
        return Ack(obj["item"], obj["attempt"], accepted, reason if isinstance(reason, str) else "")
    raise WireError(f"unknown record from the hub: {text[:64]!r}")


def _object(word: str, text: str) -> dict[str, JSON]:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise WireError(f"{word} needs a JSON object, got {text[:64]!r}") from None
    if not isinstance(obj, dict):
        raise WireError(f"{word} needs a JSON object, got {text[:64]!r}")
    return obj
