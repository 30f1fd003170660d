"""The hub: the root of a supervision tree, with tree-wide control and signal handling."""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator, Mapping, Sequence

import attrs
import trio

from strategies import Intensity, OneForOne

from ._errors import ChildNotFound, ControlError, MaxAgentsExceeded
from ._events import EventBus
from ._process import OSProcessBackend, ProcessBackend
from ._registry import Registry
from ._runtime import ChildInfo, RuntimeContext, Supervisor, _count_workers
from ._spec import AnySpec, ChildSpec, PoolSpec, SupervisorSpec, check_specs

__all__ = ["Hub", "TreeRow"]


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
                raise ValueError(f"max_agents must be an int >= 0 or None (got {max_agents!r})")
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
        self.registry = registry if registry is not None else Registry()
        self.registry.hub_id = self.context.hub_id

    @property
    def bus(self) -> EventBus:
        """The hub's event bus: ``hub.bus.subscribe()`` to receive lifecycle events."""
        return self.context.bus

    async def serve(self, *, task_status: trio.TaskStatus[Hub] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the tree and supervise it until :meth:`stop`.

        Raises:
            SupervisorEscalation: the root gave up; every child has been stopped.
        """
        async with trio.open_nursery() as nursery:
            # The registry subscribes before the tree starts, so it sees every event.
            await nursery.start(self.registry.run, self.bus)
            try:
                outcome = await self.root._serve(task_status=_Relay(task_status, self))
            finally:
                self.registry.stop()
        if outcome is not None:
            raise outcome

    async def stop(self) -> None:
        """Stop the whole tree in reverse start order and wait until it has ended."""
        await self.root.stop()

    def kill_all(self) -> None:
        """SIGKILL the process group of every running child at once (the second Ctrl-C)."""
        for handle in list(self.context.handles.values()):
            handle.signal_group(signal.SIGKILL)

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

    async def terminate_child(self, child_id: str) -> None:
        """Stop a child wherever it is in the tree; it stays stopped."""
        await self.owner(child_id).terminate_child(child_id)

    async def restart_child(self, child_id: str) -> None:
        """Start a stopped child, or stop and start a running one."""
        await self.owner(child_id).restart_child(child_id)

    async def start_child(self, supervisor: str, spec: AnySpec) -> None:
        """Add and start ``spec`` under the supervisor named ``supervisor``."""
        for s in self.supervisors():
            ids = {c.id for c in s.which_children()}
            if spec.id in ids:
                raise ControlError(f"child id {spec.id!r} already exists under {s.path!r}")
        await self.supervisor(supervisor).start_child(spec)

    async def resize(self, pool: str, size: int) -> None:
        """Resize the pool named ``pool`` (its name, path or agent type)."""
        await self.supervisor(pool).resize(size)


@attrs.define
class _Relay:
    """Reports the hub, not the root supervisor, to ``nursery.start``."""

    inner: trio.TaskStatus[Hub]
    hub: Hub

    def started(self, value: object = None) -> None:
        self.inner.started(self.hub)
