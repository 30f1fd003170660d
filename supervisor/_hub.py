"""The hub: the root of a supervision tree, with tree-wide control and signal handling."""

from __future__ import annotations

import contextlib
import logging
import random
import signal
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import attrs
import trio

from strategies import BackoffPolicy, ExponentialBackoff, Intensity, IntensityPolicy, OneForOne

from ._autoscaler import AutoscaleService
from ._context import OutputLine, RuntimeContext
from ._errors import ChildNotFound, ConfigError, ControlError, MaxAgentsExceeded, ServiceFailed
from ._events import EventBus
from ._keeper import OrphanKeeper
from ._limits import LimitsService
from ._members import _check_spec_type, _count_workers
from ._port import AgentPort
from ._process import OSProcessBackend, ProcessBackend
from ._registry import Registry
from ._runtime import ChildInfo, Supervisor
from ._spec import AnySpec, ChildSpec, PoolSpec, SupervisorSpec, agent_ids, check_specs
from .work import WorkService

__all__ = ["Hub", "Service", "TreeRow"]

_log = logging.getLogger("hubvisor")

SERVICE_BACKOFF = ExponentialBackoff(initial=0.1, factor=2.0, cap=5.0, reset_after=30.0)
"""How long the hub waits before restarting a failed service (the default)."""
SERVICE_INTENSITY = Intensity(max_restarts=5, window=30.0)
"""How many restarts of one service the hub allows before it gives up on it (the default)."""


@runtime_checkable
class Service(Protocol):
    """A sidecar actor of the hub: work queues, a metrics endpoint, your own.

    The hub starts its services beside the registry, before the tree (so they see every
    event), and stops them after the tree has stopped, by cancelling them. A service
    reaches the hub's parts through ``hub``: ``hub.bus`` (subscribe to events),
    ``hub.registry`` (agents), ``hub.agents`` (an :class:`~supervisor._port.AgentPort`:
    send to an agent, stop one for a reason, receive the agents' work messages, add to
    the children's environment), and the tree's control API (``hub.which_children()``,
    ``hub.restart_child(...)``...); never ``hub.context``, the runtime's own. It calls
    ``task_status.started()`` once it is ready; the tree starts after every service has.

    Services are supervised: one whose ``run`` raises is logged and restarted after a
    backoff (``Hub(service_backoff=...)``, exponential from 0.1 s by default), at most
    ``Hub(service_intensity=...)`` times in a window (5 in 30 s by default). One that
    fails more often than that is given up on: if the service is *essential* (an
    attribute ``essential = True``; the work service is), the hub stops its tree and
    :meth:`Hub.serve` raises :class:`~supervisor.ServiceFailed` (``hubvisor run`` exits
    1); otherwise it is logged and left out (``hub.failed_services``) and supervision goes
    on without it. A service that raises :class:`~supervisor.ServiceFailed` itself stops
    the hub at once, essential or not. A ``run`` that returns is done and not restarted.

    Example::

        @attrs.define
        class CountRestarts:
            name: str = "count-restarts"
            restarts: int = 0

            async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
                with hub.bus.subscribe(kinds=["restarting"]) as events:
                    task_status.started()
                    async for _ in events:
                        self.restarts += 1
    """

    @property
    def name(self) -> str:
        """A short name for logs and errors."""
        ...

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        """Run until cancelled (or return early, when there is nothing more to do)."""
        ...


@attrs.frozen
class TreeRow:
    """One child of the tree, as :meth:`Hub.which_children` lists it."""

    supervisor: str
    info: ChildInfo


class Hub:
    """Runs a supervision tree: the root supervisor, one per agent type beneath it.

    Args:
        spec: the root :class:`SupervisorSpec`, or a list of specs that become the
            children of a root named ``name`` (one-for-one, at most 3 restarts in 5 s).
        name: the root's name when ``spec`` is a list.
        max_agents: the most worker children the tree may hold at once.
        backend: starts processes (default: real OS processes).
        seed: seeds the random source of backoff jitter.
        hub_id: identifies this hub to its children and the registry.
        env: extra environment variables for every child.
        registry: the agent registry the hub feeds (default: an in-memory
            :class:`Registry`; give ``Registry(mirror=RedisMirror(url))`` for Redis).
        services: sidecar actors started before the tree and stopped after it (see
            :class:`Service`).
        service_backoff: the wait before a failed service is restarted.
        service_intensity: the restarts of one service allowed before the hub gives up
            on it (an essential one: the hub stops with :class:`ServiceFailed`).
        work: the work service (default: a :class:`WorkService` on the in-memory queue);
            ``hub.work.submit(agent_type, payload)`` hands work to the agents.
        keeper: start an :class:`OrphanKeeper` as ``hubvisor run`` does (the default),
            so whatever the agents start dies with the hub however it ends; only for
            real OS processes (the default ``backend``), and not when ``services``
            holds one already. ``False``: none (the agents' process groups and the
            parent-death signal remain).
        limits: start a :class:`LimitsService` as ``hubvisor run`` does (the default; as
            for ``keeper``); ``False``: ``memory_limit``/``cpu_limit`` are not enforced.

    Example::

        hub = Hub([PoolSpec(agent_type="worker", template=..., size=4)], max_agents=50)
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.serve)
            ...
            await hub.stop()
    """

    def __init__(
        self,
        spec: SupervisorSpec | Sequence[AnySpec],
        *,
        name: str = "hub",
        max_agents: int | None = None,
        backend: ProcessBackend | None = None,
        seed: int | None = None,
        hub_id: str | None = None,
        env: Mapping[str, str] | None = None,
        registry: Registry | None = None,
        services: Sequence[Service] = (),
        work: WorkService | None = None,
        service_backoff: BackoffPolicy = SERVICE_BACKOFF,
        service_intensity: IntensityPolicy = SERVICE_INTENSITY,
        keeper: bool = True,
        limits: bool = True,
    ) -> None:
        if isinstance(spec, SupervisorSpec):
            root = spec
        elif isinstance(spec, ChildSpec | PoolSpec):
            root = SupervisorSpec(name=name, children=[spec])
        else:
            root = SupervisorSpec(
                name=name, children=list(spec), strategy=OneForOne(), intensity=Intensity(3, 5)
            )
        check_specs(root)
        if max_agents is not None:
            if not isinstance(max_agents, int) or isinstance(max_agents, bool) or max_agents < 0:
                raise ConfigError(
                    f"Hub(max_agents=...) must be an int >= 0 or None (got {max_agents!r}); "
                    "e.g. max_agents=50"
                )
            wanted = _count_workers(root)
            if wanted > max_agents:
                raise MaxAgentsExceeded(
                    f"the spec starts {wanted} agents, more than max_agents={max_agents}; "
                    "shrink the pools or raise max_agents"
                )
        self.spec = root
        self.context = RuntimeContext(
            backend=backend or OSProcessBackend(),
            bus=EventBus(),
            rng=random.Random(seed),
            max_agents=max_agents,
            hub_id=hub_id or root.name,
            env=dict(env or {}),
        )
        self.root = Supervisor(root, context=self.context)
        self.agents = AgentPort(self.context)
        """The services' door to the live agents: send, stop, subscribe, environment."""
        self.registry = registry if registry is not None else Registry()
        self.registry.hub_id = self.hub_id
        for svc in services:
            if not callable(getattr(svc, "run", None)):
                raise ConfigError(
                    f"Hub(services=...): {svc!r} is not a service; give objects with an "
                    "async run(hub, *, task_status) method (see supervisor.Service)"
                )
        self.work = work if work is not None else WorkService()
        """The work service: queues per agent type, fenced at-least-once delivery."""
        self.work.serve_types(self.agent_types)
        self.service_backoff = service_backoff
        self.service_intensity = service_intensity
        self._service_failure: ServiceFailed | None = None
        self.autoscaler = AutoscaleService()
        """Resizes the pools that declare ``autoscale`` (idle when none does)."""
        self.keeper = _keeper(keeper, self.context.backend, services)
        """The orphan keeper the hub started itself (``None``: none, or one in ``services``)."""
        self.limits = _limits(limits, self.context.backend, services)  # as self.keeper
        own = tuple(s for s in (self.keeper, self.limits) if s is not None)
        self.services = (self.work, self.autoscaler, *own, *services)
        self.failed_services: list[str] = []
        """Names of the services the hub gave up on (each was logged); supervision went on."""
        self._start_lock = trio.Lock()
        self.output_dropped = 0
        """Output lines lost by :meth:`tap_output` readers that fell behind."""

    @property
    def bus(self) -> EventBus:
        """The hub's event bus: ``hub.bus.subscribe()`` to receive lifecycle events."""
        return self.context.bus

    @property
    def hub_id(self) -> str:
        """This hub's id (``HUBVISOR_HUB_ID`` of its children, the registry's hub)."""
        return self.context.hub_id

    @property
    def max_agents(self) -> int | None:
        """The most worker children the tree may hold at once (``None``: no limit)."""
        return self.context.max_agents

    async def serve(self, *, task_status: trio.TaskStatus[Hub] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the tree and supervise it until :meth:`stop`.

        Raises:
            SupervisorEscalation: the root gave up; every child has been stopped.
            ServiceFailed: an essential service (the work service) kept failing, or a
                service raised it; every child has been stopped.
        """
        async with trio.open_nursery() as nursery:
            # The registry and the services start before the tree, so they see every
            # event; they stop after it.
            await nursery.start(self.registry.run, self.bus)
            services = trio.CancelScope()
            await nursery.start(self._run_services, services)
            try:
                outcome = await self.root._serve(task_status=_Relay(task_status, self))
            finally:
                self.registry.stop()
                services.cancel()
        if self._service_failure is not None:
            raise self._service_failure
        if outcome is not None:
            raise outcome

    async def _run_services(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                for svc in self.services:
                    await nursery.start(self._run_service, svc)
                task_status.started()

    async def _run_service(
        self, svc: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run ``svc``, restarting it with backoff when it raises (see :class:`Service`).

        The hub's start waits for the first run only: a service that fails before it is
        ready is restarted in the background while the tree starts.
        """
        ready = _Once(task_status)
        name = str(getattr(svc, "name", type(svc).__name__))
        essential = getattr(svc, "essential", False) is True
        history: tuple[float, ...] = ()
        attempt = 0
        while True:
            started = trio.current_time()
            try:
                await svc.run(self, task_status=ready)
                ready.started()
                return  # done: a service may end when it has nothing more to do
            except Exception as exc:
                ready.started()  # one that failed before it was ready
                fatal = _find(exc, ServiceFailed)
                if fatal is not None:
                    _log.error("service %r: %s; stopping the hub", name, fatal)
                    await self._fail(fatal)
                    return
                now = trio.current_time()
                if self.service_backoff.resets_after(now - started):
                    attempt = 0
                attempt += 1
                decision = self.service_intensity.record(history, now)
                history = decision.history
                if not decision.allowed:
                    limit = self.service_intensity.describe()
                    if essential:
                        _log.error(
                            "service %r failed (%s: %s) more than its restart intensity of "
                            "%s; the hub cannot run without it: stopping",
                            name,
                            type(exc).__name__,
                            exc,
                            limit,
                            exc_info=exc,
                        )
                        await self._fail(
                            ServiceFailed(
                                f"service {name!r} failed more than {limit} (last: "
                                f"{type(exc).__name__}: {exc}); the hub cannot run without "
                                "it, so it stopped its tree (see the log for each failure)"
                            )
                        )
                        return
                    _log.error(
                        "service %r failed (%s: %s) more than its restart intensity of %s; "
                        "supervision goes on without it",
                        name,
                        type(exc).__name__,
                        exc,
                        limit,
                        exc_info=exc,
                    )
                    self.failed_services.append(name)
                    return
                delay = self.service_backoff.delay(attempt, self.context.rng)
                _log.error(
                    "service %r failed (%s: %s); restarting it in %.3gs (restart %d)",
                    name,
                    type(exc).__name__,
                    exc,
                    delay,
                    attempt,
                    exc_info=exc,
                )
            await trio.sleep(delay)

    async def _fail(self, failure: ServiceFailed) -> None:
        """Stop the tree because a service failed for good; serve() raises ``failure``."""
        if self._service_failure is None:
            self._service_failure = failure
        await self.root.stop()

    async def stop(self) -> None:
        """Stop the whole tree in reverse start order and wait until it has ended."""
        await self.root.stop()

    def kill_all(self) -> None:
        """SIGKILL the process group of every running child at once (the second Ctrl-C)."""
        self.context.signal_all(signal.SIGKILL)

    # ----------------------------------------------------------------------------------
    # Finding things in the tree

    def supervisors(self) -> Iterator[Supervisor]:
        """Every running supervisor, depth first, root first."""
        stack = [self.root]
        while stack:
            sup = stack.pop()
            yield sup
            stack.extend(reversed(sup.children_supervisors()))

    def supervisor(self, name: str) -> Supervisor:
        """The supervisor whose path or last path element is ``name``, or an agent type's pool."""
        found = [
            s
            for s in self.supervisors()
            if name in (s.path, s.spec.name)
            or (isinstance(s.spec, PoolSpec) and s.spec.agent_type == name)
        ]
        if len(found) != 1:
            raise ChildNotFound(
                f"{'no' if not found else 'more than one'} supervisor named {name!r}; the "
                f"supervisors are {[s.path for s in self.supervisors()]!r}"
            )
        return found[0]

    def owner(self, child_id: str) -> Supervisor:
        """The supervisor that has a child ``child_id``."""
        for sup in self.supervisors():
            if any(c.id == child_id for c in sup.which_children()):
                return sup
        raise ChildNotFound(
            f"no child {child_id!r} in the tree; `hubvisor ctl list` or hub.which_children() "
            "lists the children"
        )

    def which_children(self) -> list[TreeRow]:
        """Every child of every supervisor, depth first in start order."""
        return [TreeRow(s.path, info) for s in self.supervisors() for info in s.which_children()]

    def count_children(self) -> dict[str, int]:
        """Tree-wide counts: ``specs``, ``active``, ``workers``, ``supervisors``."""
        total = {"specs": 0, "active": 0, "workers": 0, "supervisors": 0}
        for sup in self.supervisors():
            for k, v in sup.count_children().items():
                total[k] += v
        return total

    def logs(self, child_id: str, lines: int | None = None) -> list[str]:
        """The last captured output lines of a child."""
        return self.owner(child_id).logs(child_id, lines)

    def timed_logs(self, child_id: str, lines: int | None = None) -> list[tuple[float, str]]:
        """Like :meth:`logs`, each line with the wall-clock time the hub read it."""
        return self.owner(child_id).timed_logs(child_id, lines)

    @contextlib.contextmanager
    def tap_output(
        self, max_buffer: int = 10_000
    ) -> Iterator[trio.MemoryReceiveChannel[OutputLine]]:
        """Receive every output line of every child (those started later too) while the
        block runs; a reader that falls ``max_buffer`` lines behind loses lines, counted
        in ``hub.output_dropped``, and never slows a child down."""
        send, receive = trio.open_memory_channel[OutputLine](max_buffer)

        def tap(line: OutputLine) -> None:
            try:
                send.send_nowait(line)
            except trio.WouldBlock:
                self.output_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        self.context.add_tap(tap)
        try:
            with receive:
                yield receive
        finally:
            self.context.remove_tap(tap)
            send.close()

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child wherever it is in the tree; it stays stopped."""
        await self.owner(child_id).terminate_child(child_id)

    async def delete_child(self, child_id: str) -> None:
        """Stop a child if it runs and forget its spec (a nested supervisor or pool:
        its whole subtree)."""
        await self.owner(child_id).delete_child(child_id)

    async def restart_child(self, child_id: str) -> None:
        """Start a stopped child, or stop and start a running one."""
        await self.owner(child_id).restart_child(child_id)

    async def start_child(self, supervisor: str, spec: AnySpec) -> None:
        """Add and start ``spec`` under the supervisor named ``supervisor``.

        Agent ids are unique in the whole tree, counting every member a pool may grow
        to: a started child can never share an id with a later pool member.
        """
        _check_spec_type(spec)
        async with self._start_lock:  # no other start between the check and the start
            taken = self._agent_ids()
            for child_id in agent_ids(spec):
                if child_id in taken:
                    raise ControlError(
                        f"child id {child_id!r} already exists in the tree (under "
                        f"{taken[child_id]!r}); ids name agents in the registry and must "
                        "be unique: pick another id"
                    )
            await self.supervisor(supervisor).start_child(spec)

    def agent_types(self) -> set[str]:
        """Every agent type the tree was declared with, runs, or may grow into (a pool of
        size 0 counts; so does a type whose temporary agents have all ended)."""
        running = {s.path: s for s in self.supervisors()}
        types: set[str] = set()

        def walk(path: str, spec: AnySpec, *, live: bool) -> None:
            if isinstance(spec, ChildSpec | PoolSpec):
                if spec.agent_type:
                    types.add(spec.agent_type)
                return
            sup = running.get(path) if live else None  # children added at run time too
            for child in sup.child_specs() if sup is not None else spec.children:
                sub = f"{path}/{child.id}" if isinstance(child, SupervisorSpec) else path
                walk(sub, child, live=live)

        walk(self.root.path, self.spec, live=False)
        walk(self.root.path, self.root.spec, live=True)
        return types

    def _agent_ids(self) -> dict[str, str]:
        """Every agent id the running tree holds or may grow into, with its supervisor."""
        return {
            child_id: sup.path
            for sup in self.supervisors()
            for spec in sup.child_specs()
            for child_id in agent_ids(spec)
        }

    async def resize(self, pool: str, size: int) -> None:
        """Resize the pool named ``pool`` (its name, path or agent type)."""
        await self.supervisor(pool).resize(size)


def _keeper(
    wanted: bool, backend: ProcessBackend, services: Sequence[Service]
) -> OrphanKeeper | None:
    """The keeper a hub starts itself: wanted, real processes, none given already."""
    if not wanted or not isinstance(backend, OSProcessBackend):
        return None
    if any(isinstance(s, OrphanKeeper) for s in services):
        return None
    return OrphanKeeper()


def _limits(
    wanted: bool, backend: ProcessBackend, services: Sequence[Service]
) -> LimitsService | None:
    """The limits service a hub starts itself: wanted, real processes, none given."""
    if not wanted or not isinstance(backend, OSProcessBackend):
        return None
    if any(isinstance(s, LimitsService) for s in services):
        return None
    return LimitsService()


def _find(exc: BaseException, kind: type[ServiceFailed]) -> ServiceFailed | None:
    """``exc`` or the first ``kind`` inside it (a service's nursery wraps its errors)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


@attrs.define
class _Once:
    """A task status whose ``started`` may be called more than once (the first counts)."""

    inner: trio.TaskStatus[None]
    done: bool = False

    def started(self, value: object = None) -> None:
        if not self.done:
            self.done = True
            self.inner.started()


@attrs.define
class _Relay:
    """Reports the hub, not the root supervisor, to ``nursery.start``."""

    inner: trio.TaskStatus[Hub]
    hub: Hub

    def started(self, value: object = None) -> None:
        self.inner.started(self.hub)
