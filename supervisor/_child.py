"""One incarnation of one worker child: spawn, watch, stop; it only sends messages.

A :class:`ProcessActor` owns everything about one process: its handle, its output
pumps, its readiness and heartbeat watchdogs, the graceful kill of its group, and its
own phase (starting, running, exited). It publishes the child's events on the bus and,
when the process has ended, reports the exit to its supervisor through a callback that
puts a message in the supervisor's inbox. It never reads or writes the supervisor's
records: what happens next is the supervisor's decision.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from ._context import AgentMessage, OutputLine, RuntimeContext
from ._errors import SpawnError
from ._events import (
    ChildExited,
    ChildOutput,
    ChildStarting,
    ExitStatus,
)
from ._notify import (
    NotifyMessage,
    NotifySource,
)
from ._process import ProcessHandle, SpawnRequest
from ._spec import BRUTAL_KILL, ChildSpec
from ._watchdog import ChannelWatcher, ChildPhase

__all__ = [
    "AgentMessage",
    "ChildExit",
    "ChildPhase",
    "OutputLine",
    "ProcessActor",
    "spawn_actor",
]

_PUMP_GRACE = 1.0  # seconds to drain a child's pipes after it exited
_CANCEL_PATIENCE = 5.0  # seconds an INFINITY-shutdown child gets when the hub is cancelled
_SEND_TIMEOUT = 1.0  # seconds a hub-to-agent message may wait for room in the agent's queue

_STOP = NotifyMessage("stop")

_log = logging.getLogger("hubvisor")


@attrs.frozen
class ChildExit:
    """The message an actor sends its supervisor when its process has ended.

    Attributes:
        member_id: the child's id.
        incarnation: which start of the child this was (stale reports are dropped).
        reason: the exit in words, e.g. ``"hung (no heartbeat for 5s), then killed by
            SIGKILL"``.
        normal: exit code 0 and not killed as hung.
        expected: the supervisor had asked this process to stop.
        uptime: seconds from spawn to exit.
    """

    member_id: str
    incarnation: int
    reason: str
    normal: bool
    expected: bool = False
    uptime: float = 0.0


_INHERITED: list[Any] = [None, {}]  # os.environ's raw data when decoded, and the decoding


def _inherited() -> dict[str, str]:
    """A copy of ``os.environ``, decoded again only when it changed (comparing the raw
    bytes is a C-level dict compare; decoding every variable cost each spawn more)."""
    data = getattr(os.environ, "_data", None)
    if data is None:  # pragma: no cover - not CPython's os._Environ
        return dict(os.environ)
    if _INHERITED[0] != data:
        _INHERITED[:] = [dict(data), dict(os.environ)]
    return dict(_INHERITED[1])


def child_env(
    spec: ChildSpec, *, path: str, hub_id: str, extra: Mapping[str, str]
) -> dict[str, str]:
    """The environment of a worker child: inherited, the hub's, the spec's, HUBVISOR_*."""
    env = _inherited() if spec.inherit_env else {}
    env.update(extra)
    env.update(spec.env)
    env["HUBVISOR_AGENT_ID"] = spec.id
    env["HUBVISOR_SUPERVISOR"] = path
    env["HUBVISOR_HUB_ID"] = hub_id
    if spec.agent_type is not None:
        env["HUBVISOR_AGENT_TYPE"] = spec.agent_type
    if spec.heartbeat_timeout is not None:
        env["HUBVISOR_HEARTBEAT_INTERVAL"] = f"{spec.heartbeat_timeout / 3:g}"
    if isinstance(spec.shutdown, float) and math.isfinite(spec.shutdown):
        env["HUBVISOR_SHUTDOWN"] = f"{spec.shutdown:g}"
    return env


def spawn_actor(
    spec: ChildSpec,
    *,
    env: Mapping[str, str],
    incarnation: int,
    path: str,
    context: RuntimeContext,
    ring: deque[tuple[float, str]],
    report: Callable[[ChildExit], None],
) -> ProcessActor:
    """Start the process of ``spec`` with ``context.backend`` and return its actor (not
    yet running).

    Raises:
        SpawnError: for any failure to start, with the cause in words; a backend that
            raises anything else is reported the same way, never as a crash.
    """
    request = SpawnRequest(
        child_id=spec.id,
        argv=spec.argv,
        env=env,
        cwd=spec.cwd,
        capture_output=spec.output.capture,
        notify=spec.notify,
    )
    try:
        handle = context.backend.spawn(request)
    except SpawnError:
        raise
    except Exception as exc:
        raise SpawnError(
            f"child {spec.id!r}: the process backend failed: {type(exc).__name__}: {exc}"
        ) from exc
    return ProcessActor(
        spec,
        handle,
        incarnation,
        path=path,
        context=context,
        ring=ring,
        report=report,
    )


class ProcessActor(ChannelWatcher):
    """The actor of one process; run :meth:`run` in a task, :meth:`stop` to stop it."""

    def __init__(
        self,
        spec: ChildSpec,
        handle: ProcessHandle,
        incarnation: int,
        *,
        path: str,
        context: RuntimeContext,
        ring: deque[tuple[float, str]],
        report: Callable[[ChildExit], None],
    ) -> None:
        self.spec = spec
        self.handle = handle
        self.incarnation = incarnation
        self.path = path
        self._ctx = context  # the hub's: bus, kill-all handles, counters, live actors
        self._ring = ring
        self._report = report
        self.phase = ChildPhase.STARTING
        self.exit_reason: str | None = None
        self._stop_asked = False
        self._hung: str | None = None
        self._hang_killed = False  # the watchdog found it hung and killed it
        self._condemned = trio.Event()
        self._done = trio.Event()
        self._ready = trio.Event()
        self._rejected = 0
        self._logged_at = self._beat_at = -math.inf
        self._bad_version: str | None = None
        context.attach(self, handle)
        self._publish(
            ChildStarting,
            pid=handle.pid,
            incarnation=incarnation,
            agent_type=spec.agent_type,
        )

    @property
    def stopping(self) -> bool:
        """Whether its supervisor asked it to stop (it gets no new work from then on)."""
        return self._stop_asked

    @property
    def done(self) -> bool:
        """Whether the process has ended and been reaped."""
        return self._done.is_set()

    # ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch the process until it ends, then report the exit. Never leaves it behind."""
        spec, handle = self.spec, self.handle
        started = trio.current_time()
        status: ExitStatus | None = None
        source: NotifySource | None = getattr(handle, "notify", None)
        try:
            async with trio.open_nursery() as nursery:
                for stream, name in ((handle.stdout, "stdout"), (handle.stderr, "stderr")):
                    if stream is not None:
                        nursery.start_soon(self._pump, stream, name)
                watchers, condemned = trio.CancelScope(), trio.CancelScope()
                nursery.start_soon(self._watch, source, watchers)
                nursery.start_soon(self._serve_condemned, condemned)
                try:
                    status = await handle.wait()
                finally:
                    watchers.cancel()
                    condemned.cancel()
                if source is not None:
                    self._drain(source)
                # The group is dead; give the pipes a moment to drain, not forever (an
                # escaped grandchild could hold them open).
                nursery.cancel_scope.deadline = trio.current_time() + _PUMP_GRACE
        except BaseException:
            # Cancelled from outside (the hub is going down abruptly): never leave the
            # process behind.
            with trio.CancelScope(shield=True):
                await self._signal_then_kill(handle.wait, patience=_CANCEL_PATIENCE)
                await handle.wait()
            raise
        finally:
            if source is not None:
                source.close()
            self._ctx.detach(self, handle)
            was_starting = self.phase is ChildPhase.STARTING
            self.phase = ChildPhase.EXITED
            self._done.set()
        uptime = trio.current_time() - started
        if spec.ready == "notify":
            failed_start = was_starting and not self._stop_asked
        else:
            failed_start = uptime < spec.start_period
        expected = self._stop_asked
        reason, normal = status.describe(), status.normal
        if self._hung is not None and not expected:
            reason, normal = f"{self._hung}, then {reason}", False
        self.exit_reason = reason
        self._publish(
            ChildExited,
            pid=handle.pid,
            status=status,
            expected=expected,
            failed_start=failed_start,
            uptime=uptime,
            hung=self._hang_killed and not expected,
        )
        self._report(
            ChildExit(spec.id, self.incarnation, reason, normal, expected=expected, uptime=uptime)
        )

    async def stop(self) -> None:
        """Stop the process gracefully (stop signal, ``shutdown``, SIGKILL of the group)
        and return once it has ended. Its exit is then reported as expected."""
        self._stop_asked = True
        if not self.done:
            await self._signal_then_kill(self._done.wait, warn=True)
            if not self.done:  # SIGKILLed (no patience left, or BRUTAL_KILL): wait for it
                await self._done.wait()

    def _channel(self) -> Any:
        """The hub's end of the agent channel, if it can carry a message to the agent."""
        channel = getattr(self.handle, "notify", None)
        if channel is None or self.done or not hasattr(channel, "send_to_agent"):
            return None
        return channel

    def send_nowait(self, message: NotifyMessage, *, verify: bool = True) -> bool | None:
        """Send a hub-to-agent message without waiting: ``True`` sent, ``False`` the agent
        cannot take it now (gone, no channel, or its queue is full), ``None`` this
        channel cannot send without waiting (use :meth:`send`)."""
        channel = self._channel()
        if channel is None:
            return False
        send_nowait = getattr(channel, "send_nowait", None)
        if send_nowait is None:
            return None
        try:
            return bool(send_nowait(message, verify=verify))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False

    async def send(
        self, message: NotifyMessage, timeout: float = _SEND_TIMEOUT, *, verify: bool = True
    ) -> bool:
        """Send a hub-to-agent message; ``False`` if the agent cannot take it (no channel,
        gone, or its queue stayed full for ``timeout`` seconds). ``verify=False``: the
        caller built it from checked values (see :func:`~supervisor._notify.encode`)."""
        sent = self.send_nowait(message, verify=verify)  # the common case: room for it
        channel = self._channel()
        if sent or channel is None:
            return bool(sent)
        with trio.move_on_after(timeout):
            try:
                await channel.send_to_agent(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            return True
        return False

    def kill(self) -> None:
        """SIGKILL the process group now (the second Ctrl-C)."""
        self.handle.signal_group(signal.SIGKILL)

    # ----------------------------------------------------------------------------------
    # Readiness and heartbeats

    def condemn(self, why: str) -> bool:
        """Ask for the process to be stopped gracefully because of ``why`` (e.g. over a
        resource limit): stop signal, ``shutdown``, SIGKILL, in the actor's own task. Its
        exit is then a failure whose reason starts with ``why``, and its supervisor's
        restart policy decides what follows. False if it is already stopping or ended."""
        if self._stop_asked or self.done or self._hung is not None:
            return False
        self._hung = why
        self._condemned.set()
        return True

    async def _serve_condemned(self, scope: trio.CancelScope) -> None:
        with scope:
            await self._condemned.wait()
            if self._stop_asked:
                return
            _log.warning(
                "%s/%s (pid %d): %s; stopping it", self.path, self.spec.id, self.pid, self._hung
            )
            await self._signal_then_kill(self._done.wait, warn=True)

    # ----------------------------------------------------------------------------------
    # Stopping

    async def _signal_then_kill(
        self,
        ended: Callable[[], Awaitable[object]],
        *,
        warn: bool = False,
        patience: float | None = None,
    ) -> None:
        """The graceful-stop escalation, in one place: ``STOP`` on the channel and
        ``stop_signal`` to the process (``kill_mode="mixed"``) or ``stop_signal`` to the
        group (``"group"``), up to ``shutdown`` seconds for ``ended()`` to return, then
        SIGKILL to the group (``BRUTAL_KILL``: SIGKILL at once). In mixed mode the rest
        of the group gets SIGKILL when the process has exited (the handle's ``wait``).
        ``patience`` replaces an infinite ``shutdown``. With ``warn``, say which pid
        ignored the signal and which setting to raise."""
        spec, handle = self.spec, self.handle
        if spec.shutdown == BRUTAL_KILL:
            handle.signal_group(signal.SIGKILL)
            return
        timeout = spec.shutdown
        if math.isinf(timeout) and patience is not None:
            timeout = patience
        if spec.kill_mode == "mixed":
            self.send_nowait(_STOP, verify=False)
            leader = getattr(handle, "signal", None)
            if leader is not None:
                leader(spec.stop_signal)
            else:
                handle.signal_group(spec.stop_signal)
        else:
            handle.signal_group(spec.stop_signal)
        with trio.move_on_after(timeout):
            await ended()
            return
        if warn:
            self._publish(
                ChildOutput,
                stream="stderr",
                line=f"[hubvisor] pid {handle.pid} ignored {spec.stop_signal.name} for "
                f"{timeout:g}s; sending SIGKILL to its group (raise ChildSpec.shutdown "
                "if it needs longer to stop)",
            )
        handle.signal_group(signal.SIGKILL)

    # ----------------------------------------------------------------------------------
    # Output

    async def _pump(self, stream: trio.abc.ReceiveStream, name: str) -> None:
        limit = self.spec.output.max_line_bytes
        pending = b""
        skipping = False  # inside an over-long line whose head was already emitted
        prefix = "" if name == "stdout" else "[stderr] "
        try:
            while chunk := await stream.receive_some(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if skipping:
                        skipping = False  # the tail of a line already cut and emitted
                        continue
                    self._emit_line(name, prefix, line[:limit], len(line) > limit)
                if len(pending) > limit:
                    # No newline for a long while: emit the head now, drop the rest of the
                    # line, so a child writing without newlines cannot grow our memory.
                    if not skipping:
                        self._emit_line(name, prefix, pending[:limit], True)
                    skipping = True
                    pending = b""
            if pending and not skipping:
                self._emit_line(name, prefix, pending, False)
        finally:
            # A pipe closes at once (no checkpoint, no shielded scope: one scheduling round
            # less per pump at every exit, 2,000 when a pool of 1,000 stops).
            if isinstance(stream, trio.lowlevel.FdStream):
                stream.close()
            else:  # another backend's stream: only aclose() is promised
                with trio.CancelScope(shield=True):
                    await stream.aclose()

    def _emit_line(self, name: str, prefix: str, raw: bytes, cut: bool) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r") + ("…" if cut else "")
        at = time.time()
        self._ring.append((at, prefix + text))
        if self._ctx.tapped:
            self._ctx.tap(OutputLine(at, self.spec.id, self.path, name, text))
        if self.spec.output.events:
            self._publish(ChildOutput, stream=name, line=text)
