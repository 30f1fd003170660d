"""Tell the hub you are ready, alive or busy: the child side of the notify channel.

A child started by hubvisor finds its end of the channel in ``HUBVISOR_NOTIFY_FD``. From
Python::

    from agents.notify import notify
    notify("READY")          # running from now on (ChildSpec.ready="notify" waits for it)
    notify("STATUS=busy")    # the registry shows the agent busy
    notify("HEARTBEAT")      # alive; send more often than ChildSpec.heartbeat_timeout

From a shell, every ``printf`` to the descriptor is one message::

    printf READY >&"$HUBVISOR_NOTIFY_FD"

or, from any language, ``python -m agents.notify READY STATUS=idle``.
Outside hubvisor (no ``HUBVISOR_NOTIFY_FD``) every call does nothing and returns
``False``, so agents run standalone too.

The channel is two-way: :func:`receive` returns the next message the hub sent (e.g. a
``PING``, to be answered with ``HEARTBEAT``), parsed and validated by the same table as
the hub's side (:data:`agents._protocol.MESSAGE_KINDS`, stdlib only: this module never
imports the ``supervisor`` package or trio).
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time

from ._protocol import (
    CREDS_SPACE,
    MAX_MESSAGE,
    NOTIFY_FD_ENV,
    NotifyMessage,
    enable_credentials,
    parse_from_hub,
    record_or_eof,
)

__all__ = ["fileno", "heartbeat", "notify", "ready", "receive", "status"]

_ENV = NOTIFY_FD_ENV
_sock: socket.socket | None = None
_sock_fd: str | None = None


def _socket() -> socket.socket | None:
    global _sock, _sock_fd
    value = os.environ.get(_ENV)
    if value is None or not value.isdigit():
        return None
    if _sock is None or _sock_fd != value:
        # A duplicate, so closing our socket object never closes the inherited descriptor.
        try:
            _sock = socket.socket(fileno=os.dup(int(value)))
        except OSError:
            return None
        _sock_fd = value
    return _sock


def notify(message: str) -> bool:
    """Send one message (``READY``, ``HEARTBEAT``, ``STATUS=<word>``) to the hub.

    Never blocks and never raises for a missing or gone hub: returns whether the
    message was handed to the hub's channel.
    """
    sock = _socket()
    if sock is None:
        return False
    try:
        sock.send(message.encode("utf-8"), socket.MSG_DONTWAIT)
    except OSError:
        return False
    return True


def fileno() -> int | None:
    """The descriptor to wait on (``select``/``poll``/an event loop) for messages from
    the hub, or ``None`` outside hubvisor."""
    sock = _socket()
    return None if sock is None else sock.fileno()


def receive(timeout: float | None = None) -> NotifyMessage | None:
    """The next message from the hub, waiting up to ``timeout`` seconds (``None``: until
    one comes, ``0``: only if one is there already).

    Returns ``None`` when the time is up, outside hubvisor, or once the hub has closed
    its end (it is stopping). An empty record from the hub is skipped.

    Raises:
        agents._protocol.InvalidNotifyMessage: the hub sent something this version
            does not understand (skip it and call again).
    """
    sock = _socket()
    if sock is None:
        return None
    try:
        enable_credentials(sock)  # so an empty record is told apart from end-of-channel
    except OSError:
        return None
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        if not poller.poll(wait_ms):
            if deadline is not None and time.monotonic() >= deadline:
                return None
            continue
        try:
            data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE + 1, CREDS_SPACE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        except OSError:
            return None
        record = record_or_eof(data, anc, flags)
        if record is None:
            return None  # the hub closed its end
        if record:
            return parse_from_hub(record)


def ready() -> bool:
    """Send ``READY``."""
    return notify("READY")


def heartbeat() -> bool:
    """Send ``HEARTBEAT``."""
    return notify("HEARTBEAT")


def status(value: str) -> bool:
    """Send ``STATUS=<value>``, e.g. ``status("busy")``."""
    return notify(f"STATUS={value}")


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.notify MESSAGE...``: send each message; exit 1 if one failed."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m agents.notify READY|HEARTBEAT|STATUS=<word>...", file=sys.stderr)
        return 2
    ok = all([notify(a) for a in args])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
