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
"""

from __future__ import annotations

import os
import socket
import sys

__all__ = ["heartbeat", "notify", "ready", "status"]

_ENV = "HUBVISOR_NOTIFY_FD"
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
