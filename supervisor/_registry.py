"""The agent registry: one actor that knows which agents run, where, and how they are.

One task (the actor) owns all registry state. Every update reaches it through one trio
memory channel, its inbox: the hub's lifecycle events (the :class:`~supervisor.EventBus`
delivers them straight into the inbox, in order), the heartbeats and status the agents
send over their notify channel (the runtime publishes them as events too), and requests
such as :meth:`Registry.assign`. Nothing else writes the state.

Queries read the state the actor last committed. The actor applies each update without
awaiting in between, so a query (on the trio thread) never sees half an update. Use
:meth:`Registry.sync` to wait until every event published so far has been applied.

A mirror (the Redis one, :class:`~supervisor.RedisMirror`) is told which agents changed and
copies their latest state out in batches, in its own task: a slow or absent mirror never
holds up the actor, and so never a restart.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Protocol, TypeAlias

import attrs
import trio

from ._events import (
    ChildExited,
    ChildHeartbeat,
    ChildHung,
    ChildRestarting,
    ChildRunning,
    ChildSpawnFailed,
    ChildStarting,
    ChildStatus,
    Event,
    EventBus,
    Subscription,
    SupervisorStopped,
    SupervisorStopping,
)

__all__ = [
    "REGISTRY_KINDS",
    "RESERVED_STATUSES",
    "AgentRecord",
    "AgentStatus",
    "Reclaimed",
    "Registry",
    "RegistryMirror",
]


class AgentStatus(enum.StrEnum):
    """The statuses of :attr:`AgentRecord.status` the registry knows.

    The hub owns the lifecycle ones (:attr:`reserved`): an agent cannot claim them with
    ``STATUS=`` (the notify channel refuses and counts such a message). An agent reports
    any other word, :attr:`IDLE` and :attr:`BUSY` by convention; only an ``idle`` agent
    that holds no assignment is :meth:`Registry.available`. Members are strings, so
    ``record.status == "idle"`` works.
    """

    STARTING = "starting"
    """Spawned, not yet running (no READY, start period not over). Hub-owned."""
    IDLE = "idle"
    """Running and available; every agent is idle once running until it reports otherwise."""
    BUSY = "busy"
    """What an agent conventionally reports while it works (``STATUS=busy``), and what
    an idle agent shows while it holds an assignment (the work service notes each one),
    so this status is the one answer to "is it busy?"."""
    HUNG = "hung"
    """Silent past its heartbeat timeout; its supervisor is killing it. Hub-owned."""
    STOPPING = "stopping"
    """Its supervisor is stopping (``SupervisorStopping``): never offered, whatever the
    agent says from then on. Hub-owned."""
    STOPPED = "stopped"
    """Ended because its supervisor stopped it; only seen in :class:`Reclaimed`. Hub-owned."""
    CRASHED = "crashed"
    """Ended without being asked to (a hang included); only seen in :class:`Reclaimed`.
    Hub-owned."""

    @property
    def reserved(self) -> bool:
        """Whether only the hub sets this status (an agent's ``STATUS=`` cannot)."""
        return self in RESERVED_STATUSES


RESERVED_STATUSES: frozenset[AgentStatus] = frozenset(
    {
        AgentStatus.STARTING,
        AgentStatus.HUNG,
        AgentStatus.STOPPING,
        AgentStatus.STOPPED,
        AgentStatus.CRASHED,
    }
)
"""The statuses the hub owns; an agent's ``STATUS=`` message cannot set them."""

# The statuses as the module constants they used to be (use AgentStatus).
STARTING = AgentStatus.STARTING
IDLE = AgentStatus.IDLE
HUNG = AgentStatus.HUNG
STOPPING = AgentStatus.STOPPING
CRASHED = AgentStatus.CRASHED
STOPPED = AgentStatus.STOPPED

REGISTRY_KINDS = frozenset(
    {
        "starting",
        "running",
        "heartbeat",
        "status",
        "hung",
        "exited",
        "spawn_failed",
        "restarting",
        "supervisor_stopping",
        "supervisor_stopped",
    }
)
"""The event kinds the registry folds (it never sees output lines, for one)."""


@attrs.frozen(kw_only=True)
class AgentRecord:
    """What the registry knows about one live agent (an immutable snapshot).

    Times are ``trio.current_time()`` values of the hub (virtual under ``MockClock``);
    the Redis mirror stores them as Unix times.

    Attributes:
        id: the child id, unique in the hub.
        agent_type: its :attr:`ChildSpec.agent_type <supervisor.ChildSpec.agent_type>`.
        status: an :class:`AgentStatus` (``"starting"``, ``"idle"``, ``"hung"``,
            ``"stopping"``) or the word the agent reported with ``STATUS=`` (``"busy"``...).
        pid: its process id (and process group id).
        hub_id: the hub that runs it.
        supervisor: path of the supervisor that owns it.
        spawned_at: when this incarnation was spawned.
        last_heartbeat: when it last sent a heartbeat or status (``None``: never).
        assignment: the work it holds (see :meth:`Registry.assign`), if any.
        restarts: how often its supervisor restarted it so far.
        last_exit: how its previous incarnation ended, e.g. ``"killed by SIGKILL"``.
    """

    id: str
    agent_type: str | None
    status: str
    pid: int
    hub_id: str
    supervisor: str
    spawned_at: float
    last_heartbeat: float | None = None
    assignment: str | None = None
    restarts: int = 0
    last_exit: str | None = None


@attrs.frozen
class Reclaimed:
    """An agent ended: its entry is gone and ``agent.assignment`` is handed back.

    ``agent`` is its last record, with status ``"crashed"`` (an exit the supervisor did
    not ask for, a hang included) or ``"stopped"``.
    """

    agent: AgentRecord
    reason: str
    at: float


_log = logging.getLogger("hubvisor.registry")


class RegistryMirror(Protocol):
    """Somewhere the registry copies its state to (e.g. Redis), batched by the mirror.

    The actor calls :meth:`changed` and :meth:`record` synchronously; they must only note
    the change (never block or do I/O). :meth:`run` does the copying in its own task.
    """

    def changed(self, agent_id: str) -> None:
        """Agent ``agent_id`` was added, updated or removed; read it with ``registry.get``."""
        ...

    def record(self, kind: str, agent: AgentRecord, detail: str) -> None:
        """Append an entry to the event log (``kind`` e.g. ``"crashed"``)."""
        ...

    async def run(
        self, registry: Registry, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Copy changes out until cancelled; call ``task_status.started()`` when ready."""
        ...

    async def flush_final(self) -> None:
        """Copy out what is still pending (the hub is stopping); may be cut short."""
        ...


@attrs.define(eq=False)
class _Assign:
    agent_id: str
    assignment: str | None
    done: trio.Event = attrs.field(factory=trio.Event)
    ok: bool = False


@attrs.frozen
class _AssignMany:
    assignments: dict[str, str | None]


@attrs.define(eq=False)
class _Barrier:
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.frozen
class _Stop:
    pass


_Message: TypeAlias = Event | _Assign | _AssignMany | _Barrier | _Stop


@attrs.define
class _History:
    restarts: int = 0
    last_exit: str | None = None


class Registry:
    """The hub's registry of live agents; queries are answered from the actor's state.

    Args:
        hub_id: this hub's id, stored with every agent (the :class:`Hub` sets it).
        mirror: where to copy the state to, e.g. a :class:`~supervisor.RedisMirror`
            (``None``: in memory only).
        final_flush_timeout: seconds the mirror may take to copy out the last changes
            when the registry stops.

    Example::

        hub = Hub(specs)                      # hub.registry is an in-memory Registry
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            await hub.registry.sync()
            workers = hub.registry.available("worker")
    """

    def __init__(
        self,
        *,
        hub_id: str = "hub",
        mirror: RegistryMirror | None = None,
        final_flush_timeout: float = 2.0,
    ) -> None:
        self.hub_id = hub_id
        self.mirror = mirror
        self.final_flush_timeout = final_flush_timeout
        self._agents: dict[str, AgentRecord] = {}
        self._history: dict[str, _History] = {}
        self._send, self._inbox = trio.open_memory_channel[_Message](math.inf)
        self._reclaim_subs: list[trio.MemorySendChannel[Reclaimed]] = []
        self._running = False
        self._stopped = False  # stop() was called or the actor ended
        self._stopping: set[str] = set()  # paths of supervisors that are stopping
        self._busy_by_work: set[str] = set()  # busy only because they hold an assignment
        self.updates = 0
        """How many updates the actor applied so far."""
        self.statuses_refused = 0
        """Status reports refused because they claimed a status the hub owns."""
        self.subscription: Subscription | None = None
        """The registry's subscription to the hub's bus (kinds :data:`REGISTRY_KINDS`)."""

    def __repr__(self) -> str:
        return f"<Registry hub_id={self.hub_id!r} agents={len(self._agents)}>"

    # ----------------------------------------------------------------------------------
    # Queries

    def get(self, agent_id: str) -> AgentRecord | None:
        """The live agent ``agent_id``, or ``None``."""
        return self._agents.get(agent_id)

    def agents(self) -> list[AgentRecord]:
        """Every live agent, sorted by id."""
        return sorted(self._agents.values(), key=lambda a: a.id)

    def snapshot(self) -> Mapping[str, AgentRecord]:
        """A read-only copy of the state: agent id to record."""
        return MappingProxyType(dict(self._agents))

    def by_type(self, agent_type: str) -> list[AgentRecord]:
        """The live agents of ``agent_type``, sorted by id."""
        return [a for a in self.agents() if a.agent_type == agent_type]

    def by_status(self, status: str) -> list[AgentRecord]:
        """The live agents whose status is ``status``, sorted by id."""
        return [a for a in self.agents() if a.status == status]

    def available(self, agent_type: str) -> list[AgentRecord]:
        """Idle agents of ``agent_type`` that hold no assignment, sorted by id.

        An agent whose supervisor (or an ancestor of it) is stopping is never available,
        whatever it reports.
        """
        return [
            a
            for a in self.agents()
            if a.agent_type == agent_type
            and a.status == IDLE
            and a.assignment is None
            and not self.is_stopping(a.supervisor)
        ]

    def is_stopping(self, supervisor: str) -> bool:
        """Whether the supervisor at path ``supervisor`` or one above it is stopping."""
        return any(
            supervisor == path or supervisor.startswith(path + "/") for path in self._stopping
        )

    def counts(self) -> dict[str, int]:
        """How many live agents have each status, plus ``"total"``."""
        out: dict[str, int] = {"total": len(self._agents)}
        for a in self._agents.values():
            out[a.status] = out.get(a.status, 0) + 1
        return out

    def counts_by_type(self) -> dict[str | None, int]:
        """How many live agents there are of each type."""
        out: dict[str | None, int] = {}
        for a in self._agents.values():
            out[a.agent_type] = out.get(a.agent_type, 0) + 1
        return out

    def __len__(self) -> int:
        return len(self._agents)

    def __iter__(self) -> Iterator[AgentRecord]:
        return iter(self.agents())

    # ----------------------------------------------------------------------------------
    # Updates (all go through the inbox)

    async def sync(self) -> None:
        """Wait until every event and request sent before this call has been applied."""
        if not self._running or self._stopped:
            return
        barrier = _Barrier()
        self._send.send_nowait(barrier)
        await barrier.done.wait()

    async def assign(self, agent_id: str, assignment: str | None) -> bool:
        """Record that ``agent_id`` now holds ``assignment`` (``None``: it holds nothing).

        Returns ``False`` if the agent is not live (the caller keeps the assignment).
        When the agent ends, its assignment is handed back through :meth:`reclaimed`.
        """
        if not self._running or self._stopped:
            return False
        msg = _Assign(agent_id, assignment)
        self._send.send_nowait(msg)
        await msg.done.wait()
        return msg.ok

    def note_assignments(self, assignments: Mapping[str, str | None]) -> None:
        """Like :meth:`assign` for several agents at once, without waiting: the records
        change in order with the events already sent (the work service shows each
        agent's item this way, one message per batch)."""
        if assignments and self._running and not self._stopped:
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                self._send.send_nowait(_AssignMany(dict(assignments)))

    def reclaimed(self) -> trio.MemoryReceiveChannel[Reclaimed]:
        """A channel receiving a :class:`Reclaimed` for every agent that ends from now on."""
        send, receive = trio.open_memory_channel[Reclaimed](math.inf)
        self._reclaim_subs.append(send)
        return receive

    def submit(self, event: Event) -> None:
        """Feed an event to the actor by hand (the hub's bus does this normally)."""
        self._send.send_nowait(event)

    def stop(self) -> None:
        """Ask the actor to end once it has applied everything sent before."""
        if self._running and not self._stopped:
            self._stopped = True
            self._send.send_nowait(_Stop())

    # ----------------------------------------------------------------------------------
    # The actor

    async def run(
        self,
        bus: EventBus | None = None,
        *,
        task_status: trio.TaskStatus[Registry] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the actor (and the mirror) until :meth:`stop`; then flush the mirror.

        Args:
            bus: deliver this bus's events into the inbox (``None``: only what
                :meth:`submit` sends).
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running; a Registry runs once")
        self._running = True
        if bus is not None:
            # Only the kinds it folds: output lines (OutputSpec.events) never reach it.
            self.subscription = bus.attach(self._send.clone(), REGISTRY_KINDS)
        try:
            async with trio.open_nursery() as nursery:
                if self.mirror is not None:
                    await nursery.start(self.mirror.run, self)
                task_status.started(self)
                try:
                    await self._actor()
                finally:
                    if self.mirror is not None:
                        with trio.move_on_after(self.final_flush_timeout, shield=True):
                            await self.mirror.flush_final()
                nursery.cancel_scope.cancel()
        finally:
            self._stopped = True
            self._drain_requests()
            self._inbox.close()
            for sub in self._reclaim_subs:
                sub.close()

    def _drain_requests(self) -> None:
        while True:
            try:
                msg = self._inbox.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                return
            if isinstance(msg, _Assign | _Barrier):  # sent after stop(): answer, don't hang
                msg.done.set()

    async def _actor(self) -> None:
        async for msg in self._inbox:
            if isinstance(msg, _Stop):
                return
            if isinstance(msg, _Barrier):
                msg.done.set()
            elif isinstance(msg, _Assign):
                msg.ok = self._assign(msg.agent_id, msg.assignment)
                msg.done.set()
            elif isinstance(msg, _AssignMany):
                for agent_id, assignment in msg.assignments.items():
                    self._assign(agent_id, assignment)
            else:
                self.apply(msg)

    def _assign(self, agent_id: str, assignment: str | None) -> bool:
        rec = self._agents.get(agent_id)
        if rec is None:
            return False
        self._put(attrs.evolve(rec, assignment=assignment))
        return True

    def _put(self, rec: AgentRecord) -> None:
        rec = self._busy_rule(rec)
        self._agents[rec.id] = rec
        self.updates += 1
        if self.mirror is not None:
            self.mirror.changed(rec.id)

    def _busy_rule(self, rec: AgentRecord) -> AgentRecord:
        """An idle agent that holds an assignment is busy, whatever it last said; it is
        idle again when it holds nothing (unless it said busy itself since)."""
        if rec.assignment is not None and rec.status == IDLE:
            self._busy_by_work.add(rec.id)
            return attrs.evolve(rec, status=AgentStatus.BUSY)
        if rec.id in self._busy_by_work and (
            rec.assignment is None or rec.status != AgentStatus.BUSY
        ):
            self._busy_by_work.discard(rec.id)
            if rec.status == AgentStatus.BUSY:
                return attrs.evolve(rec, status=IDLE)
        return rec

    def _live(self, event: Any) -> AgentRecord | None:
        rec = self._agents.get(event.child_id)
        return rec if rec is not None and rec.pid == event.pid else None

    def apply(self, event: Event) -> None:
        """Fold one lifecycle event into the state (the actor calls this; tests may too).

        Events about an older incarnation (another pid) than the live one are ignored.
        """
        match event:
            case ChildStarting():
                hist = self._history.setdefault(event.child_id, _History())
                new = AgentRecord(
                    id=event.child_id,
                    agent_type=event.agent_type,
                    status=STARTING,
                    pid=event.pid,
                    hub_id=self.hub_id,
                    supervisor=event.supervisor,
                    spawned_at=event.at,
                    restarts=hist.restarts,
                    last_exit=hist.last_exit,
                )
                self._put(new)
                self._record("started", new, f"pid {event.pid}")
            case ChildRunning():
                rec = self._live(event)
                if rec is not None and rec.status == STARTING:
                    status = STOPPING if self.is_stopping(rec.supervisor) else IDLE
                    self._put(attrs.evolve(rec, status=status))
            case ChildHeartbeat():
                rec = self._live(event)
                if rec is not None:
                    self._put(attrs.evolve(rec, last_heartbeat=event.at))
            case ChildStatus():
                rec = self._live(event)
                if rec is not None and rec.status != HUNG:  # hung: being killed, ignore
                    self._busy_by_work.discard(rec.id)  # what it says now counts
                    self._put(
                        attrs.evolve(
                            rec, status=self._reported(rec, event), last_heartbeat=event.at
                        )
                    )
            case ChildHung():
                rec = self._live(event)
                if rec is not None:
                    self._put(attrs.evolve(rec, status=HUNG))
                    self._record("hung", rec, f"silent for {event.silence:g}s")
            case ChildExited():
                self._history.setdefault(
                    event.child_id, _History()
                ).last_exit = event.status.describe()
                rec = self._live(event)
                if rec is not None:
                    self._reclaim(rec, event)
            case ChildSpawnFailed():
                self._history.setdefault(event.child_id, _History()).last_exit = event.error
            case SupervisorStopping():
                self._stopping.add(event.supervisor)
                for rec in list(self._agents.values()):
                    if (
                        self.is_stopping(rec.supervisor)
                        and rec.status != HUNG
                        and rec.status != STOPPING
                    ):
                        self._put(attrs.evolve(rec, status=STOPPING))
            case SupervisorStopped():
                # Every agent under it has ended; a later start is a new incarnation.
                self._stopping = {
                    p
                    for p in self._stopping
                    if p != event.supervisor and not p.startswith(event.supervisor + "/")
                }
            case ChildRestarting():
                hist = self._history.setdefault(event.child_id, _History())
                hist.restarts += 1
                rec = self._agents.get(event.child_id)
                if rec is not None:  # pragma: no cover - restarts follow the exit
                    self._put(attrs.evolve(rec, restarts=hist.restarts))
            case _:
                pass

    def _reported(self, rec: AgentRecord, event: ChildStatus) -> str:
        """The status ``rec`` gets from the agent's report: the hub's own statuses win."""
        if rec.status == STOPPING and self.is_stopping(rec.supervisor):
            return rec.status  # being stopped: never idle again, whatever it says
        try:
            status = AgentStatus(event.status)
        except ValueError:
            return event.status
        if status.reserved and status is not STOPPING:
            # Only the hub sets these (the notify channel already refuses them from an
            # agent); an agent that says it is stopping merely withdraws itself.
            self.statuses_refused += 1
            _log.warning(
                "registry: %s/%s (pid %d) claimed status %r, which only the hub sets; "
                "kept %r (%d refused so far)",
                event.supervisor,
                event.child_id,
                event.pid,
                str(status),
                str(rec.status),
                self.statuses_refused,
            )
            return rec.status
        return status

    def _reclaim(self, rec: AgentRecord, event: ChildExited) -> None:
        status = STOPPED if event.expected else CRASHED
        reason = event.status.describe()
        if rec.status == HUNG:
            reason = f"hung, then {reason}"
        last = attrs.evolve(rec, status=status, last_exit=event.status.describe())
        del self._agents[rec.id]
        self._busy_by_work.discard(rec.id)
        self.updates += 1
        if self.mirror is not None:
            self.mirror.changed(rec.id)
        self._record(status, last, reason)
        gone = Reclaimed(last, reason, event.at)
        alive = []
        for sub in self._reclaim_subs:
            try:
                sub.send_nowait(gone)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue
            alive.append(sub)
        self._reclaim_subs = alive

    def _record(self, kind: str, rec: AgentRecord, detail: str) -> None:
        if self.mirror is not None:
            self.mirror.record(kind, rec, detail)
