"""Readiness, heartbeats and the messages of one agent: the base of
:class:`~supervisor._child.ProcessActor` that reads the child's notify channel.

It marks the child running (READY, or its start period), kills one that stays silent
past ``heartbeat_timeout`` of the hub's running time (a stall of the hub's own loop
does not count) or that speaks another protocol version, publishes heartbeats and
statuses, and routes every other message (the work protocol's) to the hub's
subscribers, without knowing what they mean.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ._context import AgentMessage, RuntimeContext
from ._events import ChildHeartbeat, ChildHung, ChildRunning, ChildStatus
from ._notify import (
    PROTOCOL_VERSIONS,
    InvalidNotifyMessage,
    NotifyMessage,
    NotifySource,
    parse_notify,
)
from ._process import ProcessHandle
from ._spec import ChildSpec

__all__ = ["ChannelWatcher", "ChildPhase"]

_BAD_NOTIFY_LOG_EVERY = 60.0  # seconds between two log lines about one child's bad messages
_DRAIN_LIMIT = 1000  # records read after the exit, at most (a flood must not stall us)
_HEARTBEAT_EVENT_GAP = 0.1  # at most 10 ChildHeartbeat events/s per child, however fast it beats

_log = logging.getLogger("hubvisor")
_WARNED: set[str] = set()  # children already warned about (once per process each)


class ChildPhase(enum.Enum):
    """Where one process is, as its actor sees it."""

    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"


class ChannelWatcher:
    """The notify-channel side of a process actor (see
    :class:`~supervisor._child.ProcessActor`, the only subclass, which sets every
    attribute declared here)."""

    spec: ChildSpec
    handle: ProcessHandle
    incarnation: int
    path: str
    phase: ChildPhase
    _ctx: RuntimeContext
    _ready: trio.Event
    _stop_asked: bool
    _hung: str | None
    _hang_killed: bool
    _rejected: int
    _logged_at: float
    _beat_at: float
    _bad_version: str | None

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.handle.pid

    def _publish(self, cls: Any, **fields: Any) -> None:
        self._ctx.bus.publish(
            cls(at=trio.current_time(), supervisor=self.path, child_id=self.spec.id, **fields)
        )

    def _set_running(self) -> None:
        if self.phase is ChildPhase.STARTING and not self._stop_asked:
            self.phase = ChildPhase.RUNNING
            self._publish(ChildRunning, pid=self.pid)

    async def _watch(self, source: NotifySource | None, scope: trio.CancelScope) -> None:
        """Readiness and the heartbeat watchdog; cancelled when the process exits.

        The notify channel is read in this task itself, and a readiness timer gets a task
        of its own only when there is one to wait for: each task costs memory and
        scheduling for every child, and a pool may hold 1,000."""
        spec = self.spec
        with scope:
            timer: Callable[[], Awaitable[None]] | None = None
            if spec.ready == "start_period":
                if spec.start_period > 0:
                    timer = self._start_period
                else:
                    self._set_running()
            elif spec.ready_timeout is not None:
                timer = functools.partial(self._ready_deadline, spec.ready_timeout)
            if timer is None:
                if source is not None:
                    await self._notify(source)
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(timer)
                if source is not None:
                    await self._notify(source)

    async def _start_period(self) -> None:
        await trio.sleep(self.spec.start_period)
        self._set_running()

    async def _ready_deadline(self, timeout: float) -> None:
        """Kill the child if it is not READY after ``timeout`` seconds of the hub's
        running time: a stall of the hub's own loop (during which a READY may sit unread)
        moves the deadline on by the stall, as for heartbeats."""
        stalls = self._ctx.stalls
        stalls.watch()
        try:
            start = trio.current_time()
            mark = stalls.stalled()
            deadline = start + timeout
            while True:
                with trio.move_on_at(deadline):
                    await self._ready.wait()
                    return
                deadline = start + timeout + (stalls.stalled() - mark)
                if deadline <= trio.current_time():
                    break
        finally:
            stalls.unwatch()
        await self._kill_unresponsive(f"not READY within {timeout:g}s", timeout)

    async def _notify(self, source: NotifySource) -> None:
        """Read the child's notify messages; kill it when it falls silent too long.

        Silent means: no valid record for ``heartbeat_timeout`` seconds *of the hub's
        running time*. When the deadline fires, the watchdog first reads what the child
        already sent (records that sat in the socket while the hub was busy or stopped
        are proof of life), then discounts the time the hub's own loop did not run since
        the last record (:class:`~supervisor._context.StallMeter`)."""
        timeout = self.spec.heartbeat_timeout
        if timeout is None:
            await self._read_notify(source, None)
            return
        stalls = self._ctx.stalls
        stalls.watch()
        try:
            silence = await self._read_notify(source, timeout)
        finally:
            stalls.unwatch()
        await self._kill_unresponsive(f"hung (no heartbeat for {timeout:g}s)", silence)

    async def _read_notify(self, source: NotifySource, timeout: float | None) -> float:
        """Handle records until the child has been silent for ``timeout`` seconds of the
        hub's running time; return that silence (never returns without a timeout)."""
        stalls = self._ctx.stalls
        last = trio.current_time()
        mark = stalls.stalled() if timeout is not None else 0.0
        deadline = last + timeout if timeout is not None else math.inf
        while True:
            # One watchdog scope until it fires, its deadline moved on by each valid
            # record (a fresh scope per record was a third of a heartbeat's cost).
            with trio.CancelScope(deadline=deadline) as dog:
                while True:
                    try:
                        data: bytes | None = await source.receive()
                    except (OSError, trio.ClosedResourceError):
                        data = None
                    if data is None:  # every writer closed its end: no more heartbeats
                        await trio.sleep_forever()
                    if self._on_record(data) and timeout is not None:
                        last = trio.current_time()
                        mark = stalls.stalled()
                        dog.deadline = last + timeout
                    if self._bad_version is not None:
                        await self._kill_unresponsive(self._bad_version, 0.0, hung=False)
            assert timeout is not None
            # The deadline passed. Records the child sent while we did not read count.
            if self._drain(source):
                last = trio.current_time()
                mark = stalls.stalled()
            if self._bad_version is not None:
                await self._kill_unresponsive(self._bad_version, 0.0, hung=False)
            stalled = stalls.stalled() - mark
            deadline = last + timeout + stalled
            now = trio.current_time()
            if deadline <= now:
                return now - last - stalled

    def _drain(self, source: NotifySource) -> bool:
        """Handle the records already queued (a RESULT sent just before the child exited,
        heartbeats that sat unread while the hub stalled); whether one was valid."""
        receive_nowait = getattr(source, "receive_nowait", None)
        if receive_nowait is None:
            return False
        alive = False
        for _ in range(_DRAIN_LIMIT):
            try:
                data = receive_nowait()
            except (trio.WouldBlock, OSError, trio.ClosedResourceError):
                break
            if data is None:
                break
            alive = self._on_record(data) or alive
        return alive

    def _on_record(self, data: bytes) -> bool:
        """Handle one record; whether it was a valid message (a sign of life)."""
        spec, pid = self.spec, self.pid
        now = trio.current_time()
        try:
            msg = parse_notify(data)
        except InvalidNotifyMessage as exc:
            self._rejected += 1
            self._ctx.reject_notify()
            if now - self._logged_at >= _BAD_NOTIFY_LOG_EVERY:
                self._logged_at = now
                _log.warning(
                    "%s/%s (pid %d): dropped a notify message: %s (%d dropped so far)",
                    self.path,
                    spec.id,
                    pid,
                    exc,
                    self._rejected,
                )
            return False
        if msg.kind == "ready":
            self._ready.set()
            self._set_running()
        if msg.kind in ("ready", "heartbeat"):  # READY is a proof of life too
            if now - self._beat_at >= _HEARTBEAT_EVENT_GAP:
                self._beat_at = now
                self._publish(ChildHeartbeat, pid=pid)
        elif msg.kind == "status":
            self._publish(ChildStatus, pid=pid, status=msg.value)
        elif msg.kind == "hello" and msg.value not in {str(v) for v in PROTOCOL_VERSIONS}:
            self._bad_version = (
                f"speaks agent protocol {msg.value}, this hub speaks "
                f"{', '.join(map(str, sorted(PROTOCOL_VERSIONS)))} "
                "(upgrade the agent or the hub)"
            )
        else:  # not the actor's own: for the hub's subscribers (the work service)
            if msg.kind == "hello" and spec.heartbeat_timeout is None and self._warn_once():
                _log.warning(
                    "%s/%s takes work but has no heartbeat_timeout: if it hangs, its item "
                    "waits until it exits; set ChildSpec.heartbeat_timeout",
                    self.path,
                    spec.id,
                )
            self._route(msg)
        return True

    def _warn_once(self) -> bool:
        key = f"{self.path}/{self.spec.id}"
        if key in _WARNED:
            return False
        _WARNED.add(key)
        return True

    def _route(self, msg: NotifyMessage) -> None:
        if self._ctx.routed:
            spec = self.spec
            self._ctx.route(
                AgentMessage(
                    spec.id,
                    spec.agent_type,
                    self.path,
                    self.pid,
                    self.incarnation,
                    msg.kind,
                    msg.value,
                )
            )

    async def _kill_unresponsive(self, why: str, silence: float, *, hung: bool = True) -> None:
        """Kill a child that stopped answering (or broke the protocol) like a stop
        (graceful, then SIGKILL); its exit then goes through the normal restart path,
        with ``why`` in its reason. Returns only by cancellation."""
        if self._stop_asked:
            await trio.sleep_forever()
        self._hung = why
        if hung:
            self._hang_killed = True
            self._publish(ChildHung, pid=self.pid, silence=silence)
        else:
            _log.error("%s/%s (pid %d): %s; stopping it", self.path, self.spec.id, self.pid, why)
        # A child that no longer answers gets at most `silence` to stop, even when its
        # shutdown is INFINITY: that one is for a live agent finishing its task.
        await self._signal_then_kill(trio.sleep_forever, patience=silence)
        await trio.sleep_forever()

    async def _signal_then_kill(
        self,
        ended: Callable[[], Awaitable[object]],
        *,
        warn: bool = False,
        patience: float | None = None,
    ) -> None:
        """The graceful-stop escalation (the subclass's)."""
        raise NotImplementedError
