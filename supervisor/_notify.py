"""The agent channel, the hub's side: the socket transport of the agent protocol.

In the spirit of systemd's ``NOTIFY_SOCKET``, every child whose spec has
``notify=True`` (the default) inherits one end of a ``socketpair(AF_UNIX,
SOCK_SEQPACKET)``; its descriptor number is in the child's environment as
``HUBVISOR_NOTIFY_FD``. Each ``write()``/``send()`` on it is one message (a record
boundary is kept, so a message never arrives torn or glued to the next one). The channel
is two-way. Anything invalid, an empty record included, is dropped and counted; it never
disturbs the hub and never ends the channel: only the close of every writer's end does.

The protocol itself (the message table :data:`MESSAGE_KINDS`, :class:`MessageTable`,
:func:`parse_notify`, :func:`encode`, the limits) lives in :mod:`agents._protocol`, which
is stdlib-only so agents import it without the hub; this module re-exports its names and
adds the trio transport (:class:`SocketNotifySource`, :func:`open_notify_pair`).
``docs/agent-protocol.md`` is the reference. Python children use :mod:`agents.notify` or
:class:`agents.BaseAgent`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Protocol, runtime_checkable

import attrs
import trio

from agents._protocol import (
    CREDS_SPACE as _CREDS_SPACE,
    MAX_MESSAGE as MAX_MESSAGE,
    MESSAGE_KINDS as MESSAGE_KINDS,
    MESSAGES as MESSAGES,
    NOTIFY_FD_ENV as NOTIFY_FD_ENV,
    PROTOCOL_VERSION as PROTOCOL_VERSION,
    PROTOCOL_VERSIONS as PROTOCOL_VERSIONS,
    Direction as Direction,
    InvalidNotifyMessage as InvalidNotifyMessage,
    JSONText as JSONText,
    MessageKind as MessageKind,
    MessageTable as MessageTable,
    NotifyMessage as NotifyMessage,
    PayloadCheck as PayloadCheck,
    enable_credentials as enable_credentials,
    encode as encode,
    loads_strict as loads_strict,
    parse_from_hub as parse_from_hub,
    parse_notify as parse_notify,
    record_or_eof as record_or_eof,
    safe_json as safe_json,
    safe_text as safe_text,
)

__all__ = [
    "MAX_MESSAGE",
    "MESSAGES",
    "MESSAGE_KINDS",
    "NOTIFY_FD_ENV",
    "PROTOCOL_VERSION",
    "PROTOCOL_VERSIONS",
    "AgentChannel",
    "Direction",
    "InvalidNotifyMessage",
    "JSONText",
    "MessageKind",
    "MessageTable",
    "NotifyMessage",
    "NotifySource",
    "SocketNotifySource",
    "encode",
    "open_notify_pair",
    "parse_from_hub",
    "parse_notify",
]


# --------------------------------------------------------------------------------------
# The socket


@runtime_checkable
class NotifySource(Protocol):
    """The hub's end of one child's notify channel, as a process handle offers it."""

    async def receive(self) -> bytes | None:
        """The next raw record, or ``None`` at end-of-channel.

        ``None`` means every writer has closed its end: no record will ever come again.
        ``b""`` is an empty record (an invalid message, to be dropped and counted); it
        does not end the channel.
        """
        ...

    def close(self) -> None:
        """Close the hub's end (idempotent)."""
        ...


@runtime_checkable
class AgentChannel(NotifySource, Protocol):
    """A notify channel the hub can also send on (both ends of a real socketpair)."""

    async def send_to_agent(self, message: NotifyMessage) -> None:
        """Send a hub-to-agent ``message`` (see :func:`encode`)."""
        ...


@attrs.define(eq=False)
class SocketNotifySource:
    """The hub's end of a ``SOCK_SEQPACKET`` socketpair (an :class:`AgentChannel`)."""

    _sock: trio.socket.SocketType
    _raw: socket.socket | None = None  # the same socket, for receive_nowait
    _eof: bool = False
    _closed: bool = False

    def __attrs_post_init__(self) -> None:
        with contextlib.suppress(OSError):  # already closed: receive() fails anyway
            enable_credentials(self._sock)

    async def receive(self) -> bytes | None:
        """Receive one record, or ``None`` at end-of-channel (see :class:`NotifySource`).

        A record over :data:`MAX_MESSAGE` comes back truncated to one byte more, which
        :func:`parse_notify` refuses for its length. Descriptors an agent passes along
        (``SCM_RIGHTS``) are discarded by the kernel, never installed in the hub.
        """
        if self._eof:
            return None
        try:
            data, ancdata, flags, _ = await self._sock.recvmsg(MAX_MESSAGE + 1, _CREDS_SPACE)
        except ConnectionResetError:
            # The agent exited with records of ours unread: Linux reports that once, and
            # what the agent sent before it exited is still there to read.
            data, ancdata, flags, _ = await self._sock.recvmsg(MAX_MESSAGE + 1, _CREDS_SPACE)
        got = record_or_eof(data, ancdata, flags)
        if got is None:
            self._eof = True
        return got

    def receive_nowait(self) -> bytes | None:
        """A record already queued, or ``None`` at end-of-channel.

        Raises:
            trio.WouldBlock: no record is queued now (or this end cannot read without
                waiting).
        """
        if self._eof:
            return None
        if self._raw is None or self._closed:
            raise trio.WouldBlock
        for _ in range(2):  # a ConnectionResetError comes once (see receive)
            try:
                data, ancdata, flags, _ = self._raw.recvmsg(
                    MAX_MESSAGE + 1, _CREDS_SPACE, socket.MSG_DONTWAIT
                )
                break
            except BlockingIOError:
                raise trio.WouldBlock from None
            except ConnectionResetError:
                continue
        else:
            self._eof = True
            return None
        got = record_or_eof(data, ancdata, flags)
        if got is None:
            self._eof = True
        return got

    def send_nowait(self, message: NotifyMessage, *, verify: bool = True) -> bool:
        """Send ``message`` if the agent's queue has room now; ``False`` if it has not.

        Raises:
            InvalidNotifyMessage, trio.BrokenResourceError, trio.ClosedResourceError:
                as :meth:`send_to_agent`.
        """
        data = encode(message, verify=verify)
        if self._closed:
            raise trio.ClosedResourceError("the notify channel is closed")
        if self._raw is None:
            return False
        try:
            self._raw.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise trio.BrokenResourceError(f"the agent's end is gone: {exc}") from exc
        return True

    async def send_to_agent(self, message: NotifyMessage) -> None:
        """Send a hub-to-agent ``message``; waits while the agent's queue is full (bound
        it with a timeout).

        Raises:
            InvalidNotifyMessage: not a valid hub-to-agent message.
            trio.BrokenResourceError: the agent's end is closed (it exited).
            trio.ClosedResourceError: the hub's end was closed.
        """
        data = encode(message)
        if self._closed:
            raise trio.ClosedResourceError("the notify channel is closed")
        try:
            await self._sock.send(data)
        except OSError as exc:
            if self._closed:
                raise trio.ClosedResourceError("the notify channel is closed") from exc
            raise trio.BrokenResourceError(f"the agent's end is gone: {exc}") from exc

    def close(self) -> None:
        """Close the hub's end; a task blocked in :meth:`receive` gets ClosedResourceError."""
        self._closed = True
        self._sock.close()


def open_notify_pair() -> tuple[SocketNotifySource, int]:
    """Create a channel: the hub's end and the child's inheritable descriptor.

    The caller passes the descriptor to the child (``pass_fds``) and closes it in the
    hub once the child is spawned.
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        enable_credentials(parent)
        fd = child.detach()
        return SocketNotifySource(trio.socket.from_stdlib_socket(parent), parent), fd
    except BaseException:  # pragma: no cover - setsockopt/detach do not fail
        parent.close()
        child.close()
        raise


def close_fd(fd: int) -> None:
    """Close ``fd`` ignoring errors (for cleanup paths)."""
    with contextlib.suppress(OSError):
        os.close(fd)
