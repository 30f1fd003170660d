"""The agent protocol (v2; v1 agents are served too), both sides: the message table,
parsing, encoding and limits.

Stdlib only, so an agent (:mod:`agents.base`, :mod:`agents.notify`) imports it without
trio, attrs or the hub; the hub's transport (:mod:`supervisor._notify`) imports it too, so
there is one table and the two sides cannot drift. ``docs/agent-protocol.md`` is the
reference for agents in any language.

Every child whose spec has ``notify=True`` inherits one end of a ``socketpair(AF_UNIX,
SOCK_SEQPACKET)`` (its descriptor number in :data:`NOTIFY_FD_ENV`); each ``send()`` on it
is one record. Every kind of message, in either direction, is one entry of
:data:`MESSAGE_KINDS`, and :class:`MessageTable` parses, validates and encodes them all.

From the agent to the hub:

* ``READY`` (or systemd's ``READY=1``): the child is up; it is *running* from now on.
* ``HEARTBEAT`` (or ``WATCHDOG=1``): the child is alive. Every valid message counts as
  a sign of life for the ``heartbeat_timeout`` watchdog.
* ``STATUS=<word>``: what the child is doing, e.g. ``STATUS=idle``, ``STATUS=busy``;
  ``<word>`` is 1-32 characters of ``a-z``, ``0-9``, ``_`` or ``-`` starting with a
  letter. The statuses the hub owns (:data:`RESERVED_STATUSES`) are refused.

Agents that take work (protocol version :data:`PROTOCOL_VERSION`) also send ``HELLO=<n>``
first, then ``PROGRESS=``, ``RESULT=``, ``FAIL=``, ``HANDBACK=`` (each a JSON object
fenced by ``item`` and ``attempt``) and ``SUBMIT=`` (new work); the hub sends them
``ASSIGN=``, ``ACK=``, ``STOP`` and ``PING``, and (version 2) ``CANCEL=`` (give the held
item up: the hub cancelled it or its time limit ran out). The agent's side builds its records with
:func:`hello`, :func:`result`... and reads the hub's with :func:`decode`.

A message is at most :data:`MAX_MESSAGE` bytes of UTF-8 without control characters; one
trailing newline is ignored (so ``echo HEARTBEAT >&$HUBVISOR_NOTIFY_FD`` works from a
shell). Anything else, an empty record included, is dropped and counted by the hub.
"""

from __future__ import annotations

import enum
import json
import math
import re
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

__all__ = [
    "CREDS_SPACE",
    "MAX_MESSAGE",
    "MESSAGES",
    "MESSAGE_KINDS",
    "NOTIFY_FD_ENV",
    "PROTOCOL_VERSION",
    "PROTOCOL_VERSIONS",
    "RESERVED_STATUSES",
    "Ack",
    "Assign",
    "Cancel",
    "Direction",
    "FromHub",
    "InvalidNotifyMessage",
    "JSONText",
    "MessageKind",
    "MessageTable",
    "NotJSON",
    "NotifyMessage",
    "Ping",
    "Stop",
    "decode",
    "enable_credentials",
    "encode",
    "fail",
    "handback",
    "heartbeat",
    "hello",
    "loads_strict",
    "parse_from_hub",
    "parse_notify",
    "progress",
    "ready",
    "record_or_eof",
    "result",
    "safe_json",
    "safe_text",
    "status",
    "submit",
]

JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None
"""A JSON value: None, bool, int, float, str, and lists and dicts with str keys of them
(what ``json.loads`` returns). A ``set``, a tuple or an object is not one: ``mypy
--strict`` refuses them where an agent returns, reports or submits JSON."""

NOTIFY_FD_ENV = "HUBVISOR_NOTIFY_FD"
"""The environment variable naming the child's end of its notify channel."""

MAX_MESSAGE = 65536
"""The largest message on the agent channel, in bytes, either way; longer ones are dropped."""

PROTOCOL_VERSION = 2
"""The newest agent protocol version this hub speaks; an agent says its own in
``HELLO=<n>``. Version 2 adds ``CANCEL=`` (hub to agent)."""

PROTOCOL_VERSIONS: frozenset[int] = frozenset({1, 2})
"""The versions the hub accepts in ``HELLO=``: a version-1 agent never gets ``CANCEL=``
(it is stopped instead when its item is cancelled or runs out of time)."""

RESERVED_STATUSES: frozenset[str] = frozenset(
    {"starting", "hung", "stopping", "stopped", "crashed"}
)
"""The statuses the hub owns (:data:`supervisor.RESERVED_STATUSES`, as words): an agent's
``STATUS=`` cannot set them."""

CREDS_SPACE = socket.CMSG_SPACE(struct.calcsize("3i"))
"""Ancillary space for exactly one ``struct ucred`` (see :func:`record_or_eof`)."""

_STATUS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# A JSON escape that may decode to a lone surrogate (a pair decodes to one code point).
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")


class InvalidNotifyMessage(ValueError):
    """A notify message the receiver drops; the text says what is wrong with it."""


class Direction(enum.Enum):
    """Which way a kind of message travels on the agent channel."""

    TO_HUB = "agent->hub"
    TO_AGENT = "hub->agent"


PayloadCheck: TypeAlias = Callable[[str], str]
"""Validates a message's payload: returns it (normalised) or raises InvalidNotifyMessage."""


@dataclass(frozen=True, slots=True)
class MessageKind:
    """One kind of message on the agent channel: one entry of :data:`MESSAGE_KINDS`.

    Attributes:
        name: the :attr:`NotifyMessage.kind`, e.g. ``"status"``.
        direction: who sends it.
        word: its keyword on the wire, e.g. ``"STATUS"``.
        payload: ``None``: the message is just ``WORD``; otherwise it is
            ``WORD=<payload>`` and this checks the payload.
        aliases: other exact spellings of a message without payload (systemd's
            ``READY=1``).
        doc: one line for humans (error messages, docs).
    """

    name: str
    direction: Direction
    word: str
    payload: PayloadCheck | None = None
    aliases: tuple[str, ...] = ()
    doc: str = ""

    @property
    def usage(self) -> str:
        """How to write it, e.g. ``"STATUS=<word>"``."""
        return self.word if self.payload is None else f"{self.word}=<{self.name}>"


@dataclass(frozen=True, slots=True)
class NotifyMessage:
    """One valid message: its ``kind`` (a :attr:`MessageKind.name`) and, for a kind with
    a payload, its ``value``."""

    kind: str
    value: str | None = None


def _status_payload(value: str) -> str:
    if not _STATUS_RE.match(value) or value in RESERVED_STATUSES:
        raise InvalidNotifyMessage(
            f"bad status {value[:64]!r}: use 1-32 of a-z, 0-9, '_', '-' starting with a "
            f"letter, not one of {sorted(RESERVED_STATUSES)!r} (the hub "
            f"sets those); e.g. STATUS=busy"
        )
    return value


_ITEM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def _hello_payload(value: str) -> str:
    if not value.isdigit() or len(value) > 6:
        raise InvalidNotifyMessage(
            f"bad HELLO value {value[:64]!r}: the protocol version, e.g. HELLO={PROTOCOL_VERSION}"
        )
    return value


class JSONText(str):
    """A validated JSON payload: the text, with the decoded object in ``data`` (so the
    receiver does not decode it twice)."""

    __slots__ = ("data",)
    data: Any


class NotJSON(ValueError):
    """NaN, Infinity or a number that overflows to it in JSON text: Python's json reads
    them, JSON (and the protocol) does not."""


def _refuse_constant(name: str) -> Any:
    raise NotJSON(
        f"{name} is not JSON (the protocol forbids NaN and Infinity); send null, a string "
        "or a finite number"
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: no NaN in the text, Infinity once decoded
        raise NotJSON(
            f"{text[:32]} overflows to Infinity, which is not JSON; send a smaller number "
            "or a string"
        )
    return value


def safe_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, so it encodes as UTF-8.

    The protocol says UTF-8, and raw records are decoded strictly; but a JSON escape such
    as ``"\\udcff"`` (what ``json.dumps`` makes of a file name read with
    ``surrogateescape``) decodes to a lone surrogate, which nothing downstream can encode
    (Redis, a log file, ``print``, ``json.dumps(ensure_ascii=False)``).
    """
    return _SURROGATE_RE.sub("\ufffd", text)


def safe_json(obj: Any) -> Any:
    """``obj`` (decoded JSON) with :func:`safe_text` applied to every string and key."""
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, dict):
        return {safe_text(k): safe_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [safe_json(v) for v in obj]
    return obj


def loads_strict(text: str) -> Any:
    """Decode protocol JSON: NaN and Infinity refused (they are not JSON), and every lone
    surrogate replaced (see :func:`safe_text`), so what comes out re-encodes anywhere.

    Raises:
        ValueError: not JSON, or NaN/Infinity (the message names it).
        RecursionError: nested too deeply.
    """
    obj = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    # A lone surrogate comes from an escape, or from text a caller decoded loosely.
    risky = _SURROGATE_ESCAPE_RE.search(text) or _SURROGATE_RE.search(text)
    return safe_json(obj) if risky else obj


def _json_object(word: str, value: str, required: dict[str, type | tuple[type, ...]]) -> str:
    try:
        obj = loads_strict(value)
    except NotJSON as exc:
        raise InvalidNotifyMessage(f"{word}: {exc}") from None
    except (ValueError, RecursionError):
        raise InvalidNotifyMessage(f"{word} needs a JSON object, got {value[:64]!r}") from None
    if not isinstance(obj, dict):
        raise InvalidNotifyMessage(f"{word} needs a JSON object, got {value[:64]!r}")
    for key, types in required.items():
        got = obj.get(key)
        if (
            key not in obj
            or not isinstance(got, types)
            or isinstance(got, bool) is not (types is bool)
        ):
            raise InvalidNotifyMessage(
                f"{word}: field {key!r} is missing or not {_type_name(types)} "
                f"(got {got!r:.64}); e.g. {word}={_example(word)}"
            )
    if "item" in required and not _ITEM_ID_RE.match(obj["item"]):
        raise InvalidNotifyMessage(f"{word}: bad item id {obj['item']!r:.64}")
    if "attempt" in required and obj["attempt"] < 1:
        raise InvalidNotifyMessage(f"{word}: attempt must be >= 1 (got {obj['attempt']!r})")
    if "type" in required and not _TYPE_RE.match(obj["type"]):
        raise InvalidNotifyMessage(f"{word}: bad agent type {obj['type']!r:.64}")
    if _SURROGATE_ESCAPE_RE.search(value):  # the text, too, says what the hub keeps
        value = json.dumps(obj, separators=(",", ":"))
    text = JSONText(value)
    text.data = obj
    return text


def _type_name(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(
        {"str": "a string", "int": "an integer", "bool": "true/false"}.get(t.__name__, t.__name__)
        for t in ts
    )


_EXAMPLES = {
    "RESULT": '{"item":"w-1","attempt":1,"result":{"ok":true}}',
    "FAIL": '{"item":"w-1","attempt":1,"error":"bad input","retry":false}',
    "HANDBACK": '{"item":"w-1","attempt":1}',
    "PROGRESS": '{"item":"w-1","attempt":1,"progress":0.5,"checkpoint":{"done":10}}',
    "SUBMIT": '{"type":"worker","payload":{"n":1}}',
    "ASSIGN": '{"item":"w-1","attempt":1,"type":"worker","payload":{},"checkpoint":null}',
    "ACK": '{"item":"w-1","attempt":1,"accepted":true}',
    "CANCEL": '{"item":"w-1","attempt":1,"reason":"cancelled"}',
}


def _example(word: str) -> str:
    return _EXAMPLES.get(word, "{...}")


def _fenced(word: str, **extra: type | tuple[type, ...]) -> PayloadCheck:
    required: dict[str, type | tuple[type, ...]] = {"item": str, "attempt": int, **extra}
    return lambda value: _json_object(word, value, required)


def _fail_payload(value: str) -> str:
    """``FAIL=``: fenced, with an error; an optional ``retry_after`` (seconds >= 0)."""
    text = _fenced("FAIL", error=str)(value)
    after = getattr(text, "data", {}).get("retry_after")
    if after is not None and (
        not isinstance(after, int | float) or isinstance(after, bool) or not 0 <= after < 1e9
    ):
        raise InvalidNotifyMessage(
            f"FAIL: field 'retry_after' must be seconds >= 0 (got {after!r:.64}); e.g. "
            'FAIL={"item":"w-1","attempt":1,"error":"rate limited","retry_after":30}'
        )
    return text


MESSAGE_KINDS: tuple[MessageKind, ...] = (
    MessageKind("ready", Direction.TO_HUB, "READY", aliases=("READY=1",), doc="the agent is up"),
    MessageKind(
        "heartbeat",
        Direction.TO_HUB,
        "HEARTBEAT",
        aliases=("WATCHDOG=1",),
        doc="the agent is alive",
    ),
    MessageKind(
        "status",
        Direction.TO_HUB,
        "STATUS",
        payload=_status_payload,
        doc="what the agent is doing, e.g. STATUS=busy",
    ),
    MessageKind(
        "hello",
        Direction.TO_HUB,
        "HELLO",
        payload=_hello_payload,
        doc="a work-taking agent's first message: the protocol version it speaks",
    ),
    MessageKind(
        "progress",
        Direction.TO_HUB,
        "PROGRESS",
        payload=_fenced("PROGRESS"),
        doc="progress of the held item, and a checkpoint its next attempt receives",
    ),
    MessageKind(
        "result",
        Direction.TO_HUB,
        "RESULT",
        payload=_fenced("RESULT"),
        doc="the held item is done; its result (any JSON)",
    ),
    MessageKind(
        "fail",
        Direction.TO_HUB,
        "FAIL",
        payload=_fail_payload,
        doc="the held item failed; retry=false makes the failure final; "
        "retry_after=SECONDS (optional) delays the next delivery",
    ),
    MessageKind(
        "handback",
        Direction.TO_HUB,
        "HANDBACK",
        payload=_fenced("HANDBACK"),
        doc="the agent gives the held item back unfinished (no attempt spent)",
    ),
    MessageKind(
        "submit",
        Direction.TO_HUB,
        "SUBMIT",
        payload=lambda v: _json_object("SUBMIT", v, {"type": str}),
        doc="new work for agents of a type (a planner splitting a task, say); optional "
        '"key" (idempotent) and "after" (ids or TYPE:KEY it waits for)',
    ),
    MessageKind("ping", Direction.TO_AGENT, "PING", doc="answer with HEARTBEAT"),
    MessageKind(
        "assign",
        Direction.TO_AGENT,
        "ASSIGN",
        payload=_fenced("ASSIGN", type=str),
        doc="an item for the agent: id, attempt, type, payload, last checkpoint",
    ),
    MessageKind(
        "ack",
        Direction.TO_AGENT,
        "ACK",
        payload=_fenced("ACK", accepted=bool),
        doc="whether the hub took the agent's RESULT/FAIL/HANDBACK (a stale one is refused)",
    ),
    MessageKind(
        "cancel",
        Direction.TO_AGENT,
        "CANCEL",
        payload=_fenced("CANCEL"),
        doc="(v2) give up the held item: stop its work and answer FAIL with retry=false",
    ),
    MessageKind(
        "stop",
        Direction.TO_AGENT,
        "STOP",
        doc="finish the held item within the shutdown timeout or hand it back, then exit",
    ),
)
"""Every kind of message on the agent channel, both ways. Add a kind here (with its
payload check) and :func:`parse_notify`, :func:`parse_from_hub` and :func:`encode` know
it; the runtime dispatches on :attr:`NotifyMessage.kind`."""


class MessageTable:
    """Parses, validates and encodes the messages of a set of :class:`MessageKind`.

    Raises:
        ValueError: two kinds share a name, a word or an alias.
    """

    def __init__(self, kinds: Iterable[MessageKind]) -> None:
        self.kinds: tuple[MessageKind, ...] = tuple(kinds)
        self._by_name: dict[str, MessageKind] = {}
        self._exact: dict[str, MessageKind] = {}  # whole text -> kind without payload
        self._keyed: dict[str, MessageKind] = {}  # WORD (before "=") -> kind with payload
        for kind in self.kinds:
            spellings = [kind.word, *kind.aliases] if kind.payload is None else []
            clash = (
                kind.name in self._by_name
                or kind.word in self._keyed
                or any(t in self._exact for t in spellings)
                or (kind.payload is not None and kind.word in self._exact)
            )
            if clash or not kind.word or "=" in kind.word:
                raise ValueError(f"message kind {kind!r} clashes with another or has a bad word")
            self._by_name[kind.name] = kind
            if kind.payload is None:
                for text in spellings:
                    self._exact[text] = kind
            else:
                self._keyed[kind.word] = kind

    def kind(self, name: str) -> MessageKind:
        """The kind named ``name``; KeyError if there is none."""
        return self._by_name[name]

    def usage(self, direction: Direction) -> str:
        """E.g. ``"READY, HEARTBEAT or STATUS=<status>"``."""
        words = [k.usage for k in self.kinds if k.direction is direction]
        if not words:
            return "nothing"
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"

    def parse(self, data: bytes, direction: Direction = Direction.TO_HUB) -> NotifyMessage:
        """Validate one raw record travelling ``direction``.

        Raises:
            InvalidNotifyMessage: empty, too long, not UTF-8, control characters, a kind
                that is unknown or travels the other way, or a bad payload. Never
                anything else, whatever ``data`` is.
        """
        if len(data) > MAX_MESSAGE:
            raise InvalidNotifyMessage(f"message of {len(data)} bytes is over {MAX_MESSAGE} bytes")
        if data.endswith(b"\n"):
            data = data[:-1]
        if not data:
            raise InvalidNotifyMessage(
                f"empty message; send {self.usage(direction)} (an empty record does not "
                "end the channel)"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidNotifyMessage(f"message is not UTF-8: {data[:64]!r}") from None
        if _CONTROL_RE.search(text):
            raise InvalidNotifyMessage(f"message has control characters: {text[:64]!r}")
        kind = self._exact.get(text)
        value: str | None = None
        if kind is None:
            word, eq, rest = text.partition("=")
            kind = self._keyed.get(word) if eq else None
            if kind is not None and kind.direction is direction:
                assert kind.payload is not None
                value = _check_payload(kind, rest)
        sender = "an agent" if direction is Direction.TO_HUB else "the hub"
        if kind is None or kind.direction is not direction:
            other = f" ({kind.word} goes the other way)" if kind is not None else ""
            raise InvalidNotifyMessage(
                f"unknown message {text[:64]!r} from {sender}{other}; send {self.usage(direction)}"
            )
        return NotifyMessage(kind.name, value)

    def encode(
        self,
        message: NotifyMessage,
        direction: Direction = Direction.TO_AGENT,
        *,
        verify: bool = True,
    ) -> bytes:
        """The record for ``message`` travelling ``direction``; ``parse`` reads it back.

        Raises:
            InvalidNotifyMessage: an unknown kind, one that travels the other way, or a
                missing, extra or bad value.
        """
        kind = self._by_name.get(message.kind)
        if kind is None or kind.direction is not direction:
            raise InvalidNotifyMessage(
                f"cannot send {message.kind!r} {direction.value}; kinds are {self.usage(direction)}"
            )
        if kind.payload is None:
            if message.value is not None:
                raise InvalidNotifyMessage(f"{kind.word} takes no value: {message.value!r}")
            text = kind.word
        else:
            if message.value is None:
                raise InvalidNotifyMessage(f"{kind.word} needs a value: {kind.usage}")
            value = _check_payload(kind, message.value) if verify else message.value
            text = f"{kind.word}={value}"
        data = text.encode("utf-8")
        if verify:  # what goes out must parse; raises with the reason
            self.parse(data, direction)
        return data


def _check_payload(kind: MessageKind, value: str) -> str:
    assert kind.payload is not None
    try:
        return kind.payload(value)
    except InvalidNotifyMessage:
        raise
    except ValueError as exc:  # a payload check that raised the plain kind
        raise InvalidNotifyMessage(f"bad {kind.word} value {value[:64]!r}: {exc}") from None


MESSAGES = MessageTable(MESSAGE_KINDS)
"""The table of :data:`MESSAGE_KINDS` the hub and the agents use."""


def parse_notify(data: bytes) -> NotifyMessage:
    """Validate one raw message from an agent (see :meth:`MessageTable.parse`).

    Raises:
        InvalidNotifyMessage: empty, too long, not UTF-8, control characters, unknown or bad.
    """
    return MESSAGES.parse(data, Direction.TO_HUB)


def parse_from_hub(data: bytes) -> NotifyMessage:
    """Validate one raw message from the hub, on the agent's side.

    Raises:
        InvalidNotifyMessage: as :func:`parse_notify`.
    """
    return MESSAGES.parse(data, Direction.TO_AGENT)


def encode(message: NotifyMessage, *, verify: bool = True) -> bytes:
    """The record for a hub-to-agent ``message``, e.g. ``encode(NotifyMessage("ping"))``.

    ``verify=False`` skips re-validating a message the hub built from values it checked
    already (the work service's ASSIGN); its kind and direction are still checked.

    Raises:
        InvalidNotifyMessage: not a valid hub-to-agent message.
    """
    return MESSAGES.encode(message, Direction.TO_AGENT, verify=verify)


# --------------------------------------------------------------------------------------
# The socket, both ends


class _Socket(Protocol):
    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...


def record_or_eof(data: bytes, ancdata: list[tuple[int, int, bytes]], flags: int) -> bytes | None:
    """Tell a record from end-of-channel after ``recvmsg`` on a ``SO_PASSCRED`` socket.

    ``recv`` returns ``b""`` both for a zero-length record and at end-of-channel. With
    ``SO_PASSCRED`` set on the receiving end, Linux attaches the sender's credentials to
    every record, empty ones included, and nothing at end-of-channel. (``poll`` cannot
    tell them apart: an empty record queued before the writer's close looks like EOF.)
    Receive with ``recvmsg(MAX_MESSAGE + 1, CREDS_SPACE)``.
    """
    if data or ancdata or flags & socket.MSG_CTRUNC:
        return data
    return None


def enable_credentials(sock: _Socket) -> None:
    """Set ``SO_PASSCRED`` on a stdlib or trio socket so :func:`record_or_eof` can see
    end-of-channel."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


# --------------------------------------------------------------------------------------
# The agent's side: records to the hub, decoded messages from it


def _to_hub(text: str) -> bytes:
    """``text`` as a record, checked by the same table the hub parses it with."""
    data = text.encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise InvalidNotifyMessage(
            f"{text[:16]}... is {len(data)} bytes, over the {MAX_MESSAGE}-byte limit"
        )
    MESSAGES.parse(data, Direction.TO_HUB)
    return data


def _dumps(value: JSON) -> str:
    try:
        # Compact, ASCII-only (\uXXXX escapes), and no NaN/Infinity (not JSON).
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidNotifyMessage(f"not JSON: {exc}") from None


def _fenced_record(word: str, item: str, attempt: int, **fields: JSON) -> bytes:
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise InvalidNotifyMessage(f"{word}: attempt must be an integer >= 1, got {attempt!r:.64}")
    return _to_hub(f"{word}={_dumps({'item': item, 'attempt': attempt, **fields})}")


def hello(version: int = PROTOCOL_VERSION) -> bytes:
    """``HELLO=<version>``: a work-taking agent's first record."""
    return _to_hub(f"HELLO={version:d}")


def ready() -> bytes:
    """``READY``: the agent is up and takes work."""
    return b"READY"


def heartbeat() -> bytes:
    """``HEARTBEAT``: the agent is alive (the answer to ``PING``)."""
    return b"HEARTBEAT"


def status(word: str) -> bytes:
    """``STATUS=<word>``, e.g. ``status("busy")``."""
    return _to_hub(f"STATUS={word}")


def progress(item: str, attempt: int, value: JSON, checkpoint: JSON = None) -> bytes:
    """``PROGRESS=``: progress of the held item and the checkpoint its next attempt gets."""
    return _fenced_record("PROGRESS", item, attempt, progress=value, checkpoint=checkpoint)


def result(item: str, attempt: int, value: JSON) -> bytes:
    """``RESULT=``: the held item is done."""
    return _fenced_record("RESULT", item, attempt, result=value)


def fail(
    item: str, attempt: int, error: str, *, retry: bool, retry_after: float | None = None
) -> bytes:
    """``FAIL=``: the held item failed; ``retry=False`` makes the failure final;
    ``retry_after``: seconds before the hub delivers it again (else the pool's backoff)."""
    if retry_after is None:
        return _fenced_record("FAIL", item, attempt, error=str(error), retry=bool(retry))
    return _fenced_record(
        "FAIL", item, attempt, error=str(error), retry=bool(retry), retry_after=float(retry_after)
    )


def handback(item: str, attempt: int) -> bytes:
    """``HANDBACK=``: give the held item back unfinished (no attempt spent)."""
    return _fenced_record("HANDBACK", item, attempt)


def submit(
    agent_type: str,
    payload: JSON,
    *,
    key: str | None = None,
    after: list[str] | tuple[str, ...] = (),
    priority: int = 0,
    delay: float | None = None,
    require: Mapping[str, str] | None = None,
    time_limit: float | None = None,
) -> bytes:
    """``SUBMIT=``: new work for agents of ``agent_type``; ``key``: its idempotency key,
    ``after``: the items it waits for (ids, or ``TYPE:KEY`` of items submitted with a key);
    ``priority``, ``delay`` (seconds), ``require`` (pool labels) and ``time_limit``
    (seconds per attempt) as for ``hubvisor submit`` (docs/work-controls.md)."""
    body: dict[str, JSON] = {"type": agent_type, "payload": payload}
    if key is not None:
        body["key"] = key
    if after:
        body["after"] = list(after)
    if priority:
        body["priority"] = priority
    if delay is not None:
        body["delay"] = delay
    if require:
        labels: dict[str, JSON] = dict(require)
        body["require"] = labels
    if time_limit is not None:
        body["time_limit"] = time_limit
    return _to_hub(f"SUBMIT={_dumps(body)}")


@dataclass(frozen=True, slots=True)
class Ping:
    """``PING``: answer with ``HEARTBEAT``."""


@dataclass(frozen=True, slots=True)
class Stop:
    """``STOP``: finish the held item within the shutdown timeout or hand it back, then
    exit 0."""


@dataclass(frozen=True, slots=True)
class Assign:
    """``ASSIGN=``: an item for the agent."""

    item: str
    attempt: int
    type: str
    payload: Any = field(repr=False)  # JSON, typed as json.loads returns it
    checkpoint: Any = field(repr=False)


@dataclass(frozen=True, slots=True)
class Ack:
    """``ACK=``: whether the hub took the agent's RESULT, FAIL or HANDBACK."""

    item: str
    attempt: int
    accepted: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Cancel:
    """``CANCEL=`` (protocol v2): give up the held item ``item`` attempt ``attempt`` (the
    hub cancelled it, or its time limit ran out); answer ``FAIL`` with ``retry=false``."""

    item: str
    attempt: int
    reason: str = ""


FromHub: TypeAlias = Ping | Stop | Assign | Ack | Cancel
"""A decoded hub-to-agent message."""


def decode(data: bytes) -> FromHub:
    """Decode one record from the hub (checked by :func:`parse_from_hub`).

    Raises:
        InvalidNotifyMessage: empty, too long, not UTF-8, control characters, unknown, or
            bad fields.
    """
    message = parse_from_hub(data)
    if message.kind == "ping":
        return Ping()
    if message.kind == "stop":
        return Stop()
    assert isinstance(message.value, JSONText)
    obj: dict[str, Any] = message.value.data  # its fields checked by parse_from_hub
    if message.kind == "assign":
        return Assign(
            obj["item"], obj["attempt"], obj["type"], obj.get("payload"), obj.get("checkpoint")
        )
    reason = obj.get("reason", "")
    if message.kind == "cancel":
        return Cancel(obj["item"], obj["attempt"], reason if isinstance(reason, str) else "")
    return Ack(
        obj["item"], obj["attempt"], obj["accepted"], reason if isinstance(reason, str) else ""
    )
