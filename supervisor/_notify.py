"""The agent-to-hub notify channel: readiness, heartbeats and status from a child.

In the spirit of systemd's ``NOTIFY_SOCKET``, every child whose spec has
``notify=True`` (the default) inherits one end of a ``socketpair(AF_UNIX,
SOCK_SEQPACKET)``; its descriptor number is in the child's environment as
``HUBVISOR_NOTIFY_FD``. Each ``write()``/``send()`` on it is one message (a record
boundary is kept, so a message never arrives torn or glued to the next one):

* ``READY`` (or systemd's ``READY=1``): the child is up; it is *running* from now on.
* ``HEARTBEAT`` (or ``WATCHDOG=1``): the child is alive. Every valid message counts as
  a sign of life for the ``heartbeat_timeout`` watchdog.
* ``STATUS=<word>``: what the child is doing, e.g. ``STATUS=idle``, ``STATUS=busy``;
  ``<word>`` is 1-32 characters of ``a-z``, ``0-9``, ``_`` or ``-`` starting with a
  letter. The registry's own states ``starting``, ``hung`` and ``crashed`` are refused.

A message is at most :data:`MAX_MESSAGE` bytes of UTF-8 without control characters; one
trailing newline is ignored (so ``echo HEARTBEAT >&$HUBVISOR_NOTIFY_FD`` works from a
shell). Anything else is dropped and counted; it never disturbs the hub.

Python children use :mod:`agents.notify`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from typing import Literal, Protocol, runtime_checkable

import attrs
import trio

__all__ = [
    "MAX_MESSAGE",
    "NOTIFY_FD_ENV",
    "InvalidNotifyMessage",
    "NotifyMessage",
    "NotifySource",
    "SocketNotifySource",
    "open_notify_pair",
    "parse_notify",
]

NOTIFY_FD_ENV = "HUBVISOR_NOTIFY_FD"
"""The environment variable naming the child's end of its notify channel."""

MAX_MESSAGE = 4096
"""The largest notify message, in bytes; longer ones are dropped."""

RESERVED_STATUSES = frozenset({"starting", "hung", "crashed"})

_STATUS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_ALIASES = {
    "READY": "ready",
    "READY=1": "ready",
    "HEARTBEAT": "heartbeat",
    "WATCHDOG=1": "heartbeat",
}


class InvalidNotifyMessage(ValueError):
    """A notify message the hub drops; the text says what is wrong with it."""


@attrs.frozen
class NotifyMessage:
    """One valid message: ``kind`` and, for ``"status"``, its ``value``."""

    kind: Literal["ready", "heartbeat", "status"]
    value: str | None = None


def parse_notify(data: bytes) -> NotifyMessage:
    """Validate one raw message.

    Raises:
        InvalidNotifyMessage: too long, not UTF-8, control characters, unknown or bad.
    """
    if len(data) > MAX_MESSAGE:
        raise InvalidNotifyMessage(f"message of {len(data)} bytes is over {MAX_MESSAGE} bytes")
    if data.endswith(b"\n"):
        data = data[:-1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidNotifyMessage(f"message is not UTF-8: {data[:64]!r}") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidNotifyMessage(f"message has control characters: {text[:64]!r}")
    kind = _ALIASES.get(text)
    if kind == "ready":
        return NotifyMessage("ready")
    if kind == "heartbeat":
        return NotifyMessage("heartbeat")
    if text.startswith("STATUS="):
        value = text[len("STATUS=") :]
        if not _STATUS_RE.match(value) or value in RESERVED_STATUSES:
            raise InvalidNotifyMessage(
                f"bad status {value[:64]!r}: use 1-32 of a-z, 0-9, '_', '-' starting with a "
                f"letter, not one of {sorted(RESERVED_STATUSES)!r}; e.g. STATUS=busy"
            )
        return NotifyMessage("status", value)
    raise InvalidNotifyMessage(
        f"unknown message {text[:64]!r}; send READY, HEARTBEAT or STATUS=<word>"
    )


@runtime_checkable
class NotifySource(Protocol):
    """The hub's end of one child's notify channel, as a process handle offers it."""

    async def receive(self) -> bytes:
        """The next raw message; ``b""`` once every writer has closed its end."""
        ...

    def close(self) -> None:
        """Close the hub's end (idempotent)."""
        ...


@attrs.define(eq=False)
class SocketNotifySource:
    """The hub's end of a ``SOCK_SEQPACKET`` socketpair."""

    _sock: trio.socket.SocketType

    async def receive(self) -> bytes:
        """Receive one record; records over :data:`MAX_MESSAGE` come back truncated+1."""
        # One byte more than allowed: a longer record is cut by the kernel and then
        # refused by parse_notify for its length.
        return await self._sock.recv(MAX_MESSAGE + 1)

    def close(self) -> None:
        """Close the hub's end; a task blocked in :meth:`receive` gets ClosedResourceError."""
        self._sock.close()


def open_notify_pair() -> tuple[SocketNotifySource, int]:
    """Create a channel: the hub's end and the child's inheritable descriptor.

    The caller passes the descriptor to the child (``pass_fds``) and closes it in the
    hub once the child is spawned.
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        fd = child.detach()
        return SocketNotifySource(trio.socket.from_stdlib_socket(parent)), fd
    except BaseException:  # pragma: no cover - detach/from_stdlib_socket do not fail
        parent.close()
        child.close()
        raise


def close_fd(fd: int) -> None:
    """Close ``fd`` ignoring errors (for cleanup paths)."""
    with contextlib.suppress(OSError):
        os.close(fd)
