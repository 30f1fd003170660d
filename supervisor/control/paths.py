"""Where a hub's control socket lives, who may reach it, and what a command says when no
hub is there.

By default the socket is ``$XDG_RUNTIME_DIR/hubvisor/<hub id>.sock``, else
``/tmp/hubvisor-<uid>/<hub id>.sock``, in a directory of mode 0700 that both the hub and
its clients refuse if another user could control it. Stdlib and click only: every
command imports it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .._errors import ControlError

__all__ = [
    "HUB_ID_ENV",
    "SOCKET_ENV",
    "NoHubExit",
    "RunningHub",
    "check_private_dir",
    "claim",
    "default_base",
    "default_socket_path",
    "env_socket_path",
    "no_hub_message",
    "no_hub_report",
    "peer_pid",
    "running_hubs",
    "taken",
]

SOCKET_ENV = "HUBVISOR_SOCKET"
"""The control socket every command uses when given no ``--socket``; ``run`` and ``demo``
put it in their agents' environment."""


def default_base() -> Path:
    """The directory of the default sockets (see the module's docstring)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "hubvisor"
    return Path(tempfile.gettempdir()) / f"hubvisor-{os.getuid()}"


def default_socket_path(hub_id: str) -> Path:
    """``$XDG_RUNTIME_DIR/hubvisor/<hub_id>.sock``, or under ``/tmp/hubvisor-<uid>/``."""
    return default_base() / f"{hub_id}.sock"


HUB_ID_ENV = "HUBVISOR_HUB_ID"
"""The hub id every command uses when given neither ``--socket`` nor ``--hub-id`` (and
``$HUBVISOR_SOCKET`` is not set); ``run`` and ``demo`` take it as their own id."""


def env_socket_path() -> Path:
    """The socket of a command given neither ``--socket`` nor ``--hub-id``:
    ``$HUBVISOR_SOCKET``, else the default path of ``$HUBVISOR_HUB_ID``, else the socket
    of the one hub running in the default directory, else the default path of the hub id
    ``hub`` (the hub of a tree named ``hub``; when none runs there, the command's error
    lists the hubs that do)."""
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    hub_id = os.environ.get(HUB_ID_ENV)
    if hub_id:
        return default_socket_path(hub_id)
    hubs = running_hubs()
    return hubs[0].socket if len(hubs) == 1 else default_socket_path("hub")


@dataclass(frozen=True)
class RunningHub:
    """A hub listening on a socket of the default directory."""

    id: str
    """The hub's id: the socket's name without ``.sock``."""
    pid: int | None
    """The hub's process id, from the socket's peer credentials (``None``: unknown)."""
    socket: Path


def running_hubs(base: Path | None = None) -> list[RunningHub]:
    """The hubs listening on the sockets in ``base`` (default: :func:`default_base`), by
    id. A socket nothing listens on (left by a hub that was killed) is not a running hub;
    a directory that is missing or unsafe (:func:`check_private_dir`) holds none."""
    base = default_base() if base is None else base
    try:
        check_private_dir(base, ControlError, "--socket")
        paths = sorted(base.glob("*.sock"))
    except (ControlError, OSError):
        return []
    found = []
    for path in paths:
        alive, pid = _probe(path)
        if alive:
            found.append(RunningHub(path.name.removesuffix(".sock"), pid, path))
    return found


def _probe(path: Path) -> tuple[bool, int | None]:
    """Whether something listens at ``path``, and its pid if the system tells it."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False, None
    try:
        return True, peer_pid(probe)
    finally:
        probe.close()


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end of a Unix socket (Linux's SO_PEERCRED),
    else ``None``."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # pragma: no cover - not Linux
        return None
    try:
        pid: int = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))[0]
    except OSError:  # pragma: no cover - the peer is gone already
        return None
    return pid or None


def check_private_dir(directory: Path, error: type[Exception], option: str) -> None:
    """Refuse a default socket directory someone else could control.

    ``/tmp/hubvisor-<uid>`` can be created by any user before us; a hub or client that
    used it would hand the control socket (or the requests) to that user.
    """
    fix = f"or pass {option} PATH to use a socket elsewhere"
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise error(f"cannot inspect the control directory {directory}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise error(
            f"the control directory {directory} is a symlink, not a private directory; "
            f"remove it (rm {directory}) if you did not make it, {fix}"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise error(
            f"the control directory {directory} is not a directory; remove it (rm {directory}), "
            f"{fix}"
        )
    uid = os.getuid()
    if st.st_uid != uid:
        raise error(
            f"the control directory {directory} belongs to uid {st.st_uid}, not to you "
            f"(uid {uid}): another user could read or answer your control requests; have "
            f"it removed (as root: rm -r {directory}), set XDG_RUNTIME_DIR to a private "
            f"directory, {fix}"
        )
    if st.st_mode & 0o077:
        raise error(
            f"the control directory {directory} has mode {stat.S_IMODE(st.st_mode):04o}; it "
            f"must be private so only you reach the control socket: chmod 700 {directory}, {fix}"
        )


def no_hub_message(path: Path) -> str:
    """What every command says when no hub listens at ``path`` (it exits 3)."""
    return f"no hub is running at {path}; start one with `hubvisor run SPEC`"


def no_hub_report(path: Path) -> str:
    """What a command says when no hub listens at ``path``: :func:`no_hub_message`, and
    the hubs that run in the default directory, or that none does."""
    base = default_base()
    hubs = [hub for hub in running_hubs(base) if hub.socket != path]
    if not hubs:
        return f"{no_hub_message(path)} (no hub runs in {base})"
    rows = "\n".join(
        f"  {hub.id}  pid {hub.pid if hub.pid is not None else '?'}  {hub.socket}" for hub in hubs
    )
    return (
        f"no hub is running at {path}; the hubs running (id, pid, socket):\n{rows}\n"
        "name one with --hub-id ID (or HUBVISOR_HUB_ID=ID), or pass --socket PATH"
    )


class NoHubExit(click.ClickException):
    """No hub listens at the socket: the message alone, exit status 3."""

    exit_code = 3

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


def claim(path: Path) -> None:
    """Make the socket's directory, refuse a live hub's socket, remove a dead one's."""
    if path.parent == default_base():
        check_private_dir(path.parent, ControlError, "--control-socket")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlError(
            f"cannot create the control socket's directory {path.parent}: {exc.strerror}; "
            "pass --control-socket PATH in a directory you can write"
        ) from None
    if path.parent == default_base():
        check_private_dir(path.parent, ControlError, "--control-socket")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(
            f"{path} exists and is not a socket; hubvisor will not replace it: remove it if "
            "it is a leftover, or pass --control-socket PATH"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)  # left by a hub that died: take it over
            return
        raise ControlError(
            f"cannot use the control socket {path}: {exc.strerror}; remove it, or pass "
            "--control-socket PATH"
        ) from None
    finally:
        probe.close()
    raise taken(path)


def taken(path: Path) -> ControlError:
    return ControlError(
        f"another hub is already listening at {path}; stop that hub (hubvisor ctl --socket "
        f"{path} stop), or run this one with another hub id (the root spec's name) or "
        "--control-socket PATH"
    )
