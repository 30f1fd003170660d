"""Starting, signalling and reaping real OS processes, behind a small backend protocol.

Every child runs in its own process group (its pgid is its pid), so SIGKILL of the group
leaves nothing behind, grandchildren included. The graceful stop signal goes to the child
alone or to the whole group (``ChildSpec.kill_mode``).

**Parent-death signal.** Children must die with the hub even if the hub is SIGKILLed and
cannot clean up. On Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the child does that.
Setting it from a ``preexec_fn`` disables CPython's vfork fast path (measured: 458
spawns/s with it against 1,855/s without). Instead hubvisor starts the child through
util-linux's ``setpriv --pdeathsig KILL -- PROGRAM ARGS...``, which sets the flag and
execs the program: the hub keeps the fast path and pays one extra ``exec`` in the child
(measured: about 710 spawns/s end to end, see ``benchmarks/``). Where ``setpriv`` is
missing, hubvisor falls back to the ``preexec_fn``. The signal is tied to the *thread*
that spawned the child, so spawning happens on the thread that runs ``trio.run`` (trio's
own ``open_process`` spawns from worker threads that exit when idle, which would kill
the children). Grandchildren are not covered by the parent-death signal: a program that
must outlive neither should be stopped through its group, which the hub always does on a
clean exit.

**One exec while an orphan keeper runs.** A child whose environment carries the mark of a
running :class:`~supervisor.OrphanKeeper` (``hubvisor run``, ``Hub(spec)``) is started
without ``setpriv``: the keeper SIGKILLs every marked process once the hub is gone, by
any means (SIGKILL included), grandchildren too, so the parent-death signal adds nothing
and its second exec cost every start about 1 ms (restart p50 at N = 1,000: 4.2x the
minimal daemon with it, 2.2x without, same run). While no keeper runs (a bare
:class:`~supervisor.Supervisor`, or the moments between a keeper's death and its
replacement) children get the parent-death signal as before.

Waiting uses a pidfd (Linux >= 5.3): it becomes readable when the child exits, before it
is reaped. While the child is an unreaped zombie its pid, and so its process group id,
cannot be reused, which makes "kill the rest of the group, then reap" race-free.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import attrs
import trio

from ._errors import SpawnError
from ._events import ExitStatus
from ._keeper import MARK_ENV
from ._notify import NOTIFY_FD_ENV, SocketNotifySource, close_fd, open_notify_pair

__all__ = ["OSProcessBackend", "ProcessBackend", "ProcessHandle", "SpawnRequest"]

_PR_SET_PDEATHSIG = 1
_SETPRIV = shutil.which("setpriv")
_RESERVE_FDS = 10  # a spawn's peak: notify pair, two pipes, Popen's error pipe, pidfd
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})


class SpawnResourceError(SpawnError):
    """A spawn failed because the *hub* ran out of a resource (file descriptors,
    processes, memory): not the child's fault. The runtime retries it with a backoff
    and does not count it against the restart intensity."""


@attrs.define(eq=False)
class FdReserve:
    """A few descriptors on ``/dev/null`` held while the hub runs and let go just for a
    spawn (the classic trick), so a hub whose fd table something else filled (a flood of
    connections) can still restart its children.

    The runtime opens it when the tree starts and closes it when the tree has ended.
    """

    size: int = _RESERVE_FDS
    _fds: list[int] = attrs.field(factory=list)
    active: bool = False

    def open(self) -> None:
        """Start holding descriptors (as many as there is room for)."""
        self.active = True
        self._fill()

    def close(self) -> None:
        """Let go of every descriptor held, for good."""
        self.active = False
        self._release()

    def _fill(self) -> None:
        while self.active and len(self._fds) < self.size:
            try:
                if self._fds:  # a dup skips open()'s path lookup: a fifth of the cost
                    self._fds.append(os.dup(self._fds[0]))
                else:
                    self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return  # a full table: hold what we have, try again after the next spawn

    def _release(self) -> None:
        while self._fds:
            close_fd(self._fds.pop())

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Let go of the reserve for the body (a spawn), then take it back."""
        self._release()
        try:
            yield
        finally:
            self._fill()


@attrs.frozen(kw_only=True)
class SpawnRequest:
    """Everything a backend needs to start one child's process."""

    child_id: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None = None
    capture_output: bool = True
    pass_fds: Sequence[int] = ()
    notify: bool = False
    """Open a notify channel (see :mod:`supervisor._notify`): the child finds its end in
    ``HUBVISOR_NOTIFY_FD`` and the handle offers the hub's end as ``notify``."""


@runtime_checkable
class ProcessHandle(Protocol):
    """One started process, as the runtime sees it."""

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        ...

    @property
    def stdout(self) -> trio.abc.ReceiveStream | None:
        """The read end of the child's stdout, if captured."""
        ...

    @property
    def stderr(self) -> trio.abc.ReceiveStream | None:
        """The read end of the child's stderr, if captured."""
        ...

    async def wait(self) -> ExitStatus:
        """Wait for the process to end, kill what is left of its group, reap it."""
        ...

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group; nothing if it already ended."""
        ...


# A handle may also offer ``signal(sig)``: send ``sig`` to the process alone (not its
# group), nothing if it already ended. Without it the runtime signals the group.


@runtime_checkable
class ProcessBackend(Protocol):
    """Starts processes for the runtime; the real one is :class:`OSProcessBackend`.

    ``spawn`` is synchronous: starting a process must not let other tasks run between
    the decision to start and the process existing.
    """

    def spawn(self, request: SpawnRequest) -> ProcessHandle:
        """Start the process or raise :class:`~supervisor.SpawnError` saying why."""
        ...


def _pdeathsig_preexec() -> None:  # pragma: no cover - runs in the child
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the hub died before the flag was set
        os._exit(1)


@attrs.define(eq=False)
class _OSProcess:
    _popen: subprocess.Popen[bytes]
    _pidfd: int
    stdout: trio.lowlevel.FdStream | None
    stderr: trio.lowlevel.FdStream | None
    _status: ExitStatus | None = None
    notify: SocketNotifySource | None = None

    @property
    def pid(self) -> int:
        return self._popen.pid

    async def wait(self) -> ExitStatus:
        if self._status is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            if self._status is None:
                self._reap()
        assert self._status is not None
        return self._status

    def _reap(self) -> None:
        # The child is a zombie now: its pid (== pgid) cannot be reused until we reap it,
        # so killing the rest of the group cannot hit an unrelated process.
        self._kill_group(signal.SIGKILL)
        try:
            _, wait_status = os.waitpid(self.pid, 0)
            status = ExitStatus.from_wait_status(wait_status)
        except ChildProcessError:  # pragma: no cover - someone else reaped it
            status = ExitStatus(code=255)
        self._status = status
        self._popen.returncode = status.code if status.code is not None else -(status.signal or 0)
        trio.lowlevel.notify_closing(self._pidfd)
        os.close(self._pidfd)

    def _kill_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover - a setuid program in the group
            pass

    def signal_group(self, sig: int) -> None:
        if self._status is None:
            self._kill_group(sig)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process alone; nothing if it was reaped (until then its
        pid cannot be reused)."""
        if self._status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def _resolve(request: SpawnRequest) -> str:
    program = request.argv[0]
    cwd = request.cwd or os.getcwd()
    if request.cwd is not None and not os.path.isdir(request.cwd):
        raise SpawnError(
            f"child {request.child_id!r}: cwd {request.cwd!r} is not a directory; "
            "create it or fix ChildSpec.cwd"
        )
    if "/" in program:
        path = program if os.path.isabs(program) else os.path.join(cwd, program)
        if not os.path.exists(path):
            raise SpawnError(
                f"child {request.child_id!r}: executable {program!r} does not exist "
                f"(looked at {path!r}); fix argv[0]"
            )
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise SpawnError(
                f"child {request.child_id!r}: {program!r} is not an executable file; "
                f"fix argv[0] or run chmod +x {path}"
            )
        return path
    search = request.env.get("PATH", os.defpath)
    found = shutil.which(program, path=search)
    if found is None:
        raise SpawnError(
            f"child {request.child_id!r}: executable {program!r} not found on "
            f"PATH={search!r}; install it, give an absolute path in argv[0], or set PATH "
            "in ChildSpec.env"
        )
    return found


def _os_error_message(child_id: str, step: str, exc: OSError) -> str:
    why = os.strerror(exc.errno) if exc.errno else str(exc)
    fix = (
        "; free some file descriptors or raise the limit (ulimit -n)"
        if exc.errno in (errno.EMFILE, errno.ENFILE)
        else "; the hub is short of processes or memory (ulimit -u, free memory)"
        if exc.errno in _RESOURCE_ERRNOS
        else ""
    )
    return f"child {child_id!r}: cannot {step}: {why}{fix}"


def _kill_unwatched(popen: subprocess.Popen[bytes]) -> None:
    """Kill and reap a child we could not start watching: it must not be left behind."""
    with contextlib.suppress(OSError):
        os.killpg(popen.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        popen.kill()
    with contextlib.suppress(ChildProcessError):
        popen.wait()


@attrs.define
class OSProcessBackend:
    """Starts real processes: own process group, parent-death signal, captured output.

    Args:
        pdeathsig: use the parent-death signal (see the module docs for the mechanism).
    """

    pdeathsig: bool = True
    keeper_mark: str | None = None
    """The mark of the orphan keeper running now (set by :class:`~supervisor.OrphanKeeper`
    while its process lives): a child carrying it needs no parent-death signal."""
    reserve: FdReserve = attrs.field(factory=FdReserve)
    """Descriptors let go just for a spawn (see :class:`FdReserve`)."""

    def spawn(self, request: SpawnRequest) -> ProcessHandle:
        """Start ``request.argv``; raise :class:`SpawnError` naming the cause if it can't
        (:class:`SpawnResourceError` when the hub is out of fds, processes or memory)."""
        with self.reserve.released():
            return self._spawn(request)

    def _spawn(self, request: SpawnRequest) -> ProcessHandle:
        executable = _resolve(request)
        argv: list[str] = [executable, *request.argv[1:]]
        preexec = None
        kept = self.keeper_mark is not None and request.env.get(MARK_ENV) == self.keeper_mark
        if self.pdeathsig and not kept:
            if _SETPRIV is not None:
                argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
            else:  # pragma: no cover - util-linux is always there on Debian
                preexec = _pdeathsig_preexec
        out_r = out_w = err_r = err_w = child_fd = -1
        env = dict(request.env)
        pass_fds = tuple(request.pass_fds)
        notify: SocketNotifySource | None = None
        popen: subprocess.Popen[bytes] | None = None
        step = "open its notify channel"
        try:
            if request.notify:
                notify, child_fd = open_notify_pair()
                env[NOTIFY_FD_ENV] = str(child_fd)
                pass_fds += (child_fd,)
            step = "open its output pipes"
            if request.capture_output:
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
            step = f"start {request.argv[0]!r}"
            popen = subprocess.Popen(
                argv,
                executable=argv[0],
                stdin=subprocess.DEVNULL,
                stdout=out_w if request.capture_output else None,
                stderr=err_w if request.capture_output else None,
                env=env,
                cwd=request.cwd,
                process_group=0,
                pass_fds=pass_fds,
                preexec_fn=preexec,
                close_fds=True,
            )
            step = "watch it (pidfd_open)"
            pidfd = os.pidfd_open(popen.pid)
        except BaseException as exc:
            for fd in (out_r, err_r):
                if fd >= 0:
                    close_fd(fd)
            if notify is not None:
                notify.close()
            if popen is not None:
                _kill_unwatched(popen)
            if isinstance(exc, OSError):
                message = _os_error_message(request.child_id, step, exc)
                if exc.errno in _RESOURCE_ERRNOS:
                    raise SpawnResourceError(message) from exc
                raise SpawnError(message) from exc
            raise
        finally:
            for fd in (out_w, err_w, child_fd):
                if fd >= 0:
                    close_fd(fd)
        return _OSProcess(
            popen,
            pidfd,
            trio.lowlevel.FdStream(out_r) if out_r >= 0 else None,
            trio.lowlevel.FdStream(err_r) if err_r >= 0 else None,
            notify=notify,
        )
