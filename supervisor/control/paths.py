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
import tempfile
from pathlib import Path
from typing import Any

import click

from .._errors import ControlError

__all__ = [
    "SOCKET_ENV",
    "NoHubExit",
    "check_private_dir",
    "claim",
    "default_base",
    "default_socket_path",
    "env_socket_path",
    "no_hub_message",
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


def env_socket_path() -> Path:
    """``$HUBVISOR_SOCKET``, else the default path of the hub id ``hub``."""
    env = os.environ.get(SOCKET_ENV)
    return Path(env) if env else default_socket_path("hub")


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
