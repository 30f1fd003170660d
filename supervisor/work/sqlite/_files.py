"""The state directory: where it is, making it, and the lock that keeps it to one hub."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..._errors import ControlError

DB_NAME = "work.sqlite3"
LOCK_NAME = "lock"

__all__ = ["DB_NAME", "LOCK_NAME", "StateLock", "default_state_dir", "make_state_dir"]


def default_state_dir(hub_id: str) -> Path:
    """Where a hub keeps its state when ``--state-dir`` is not given:
    ``$XDG_STATE_HOME/hubvisor/<hub id>/``, else ``~/.local/state/hubvisor/<hub id>/``
    (an ``XDG_STATE_HOME`` that is empty or relative is ignored, as the XDG spec says).

    Example::

        >>> default_state_dir("build")  # doctest: +SKIP
        PosixPath('/home/me/.local/state/hubvisor/build')
    """
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "hubvisor" / hub_id


def make_state_dir(path: Path) -> None:
    """Create ``path`` (mode 0700; its missing parents as the umask says), or raise
    :class:`ControlError` naming it and the fix."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlError(
            f"cannot create the state directory {path} ({exc.strerror or exc}); create it "
            "(mode 0700) with a user that may, or give the hub another one with --state-dir"
        ) from None


class StateLock:
    """One hub per state directory: an exclusive ``flock`` on ``<dir>/lock``, which
    holds the pid of the hub that has it. The kernel lets go of it when the hub's
    process ends, however it ends, so a hub killed with SIGKILL leaves no stale lock.
    The descriptor is close-on-exec: no agent inherits it (an agent outliving its hub
    would otherwise keep the directory locked)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`ControlError` naming the hub that has it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ControlError(
                f"cannot write in the state directory {self.directory} "
                f"({exc.strerror or exc}); make it writable by this user, or give the hub "
                "another one with --state-dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise ControlError(
                f"another hub (pid {pid}) uses the state directory {self.directory}; stop it "
                "first, or give this hub its own: another hub id (--hub-id, or the root "
                "spec's name), whose default directory differs, or --state-dir DIR"
            ) from None
        except OSError as exc:  # e.g. ENOLCK: a file system without locks
            os.close(fd)
            raise ControlError(
                f"cannot lock {self.path} ({exc.strerror or exc}); put the state directory "
                "on a local file system with --state-dir"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise ControlError(
                f"cannot write {self.path} ({exc.strerror or exc}); free space on its disk "
                "or give the hub another directory with --state-dir"
            ) from None
        self.fd = fd

    def release(self) -> None:
        """Let go of the lock (idempotent). The file stays: removing it would let two
        hubs lock two different files of the same name."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"
