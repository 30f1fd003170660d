"""Prometheus metrics of a hub, served over HTTP by a hub service.

:class:`MetricsService` counts what happens from the event bus (restarts, exits, hangs,
work submitted, completed, reclaimed...) and reads what *is* from the hub when scraped
(agents by status, last heartbeats, queue depth, CPU and memory of each agent's process
group from ``/proc``). The exposition is ``prometheus_client``'s text format, from a
registry of its own (never the process-global one), served by a small trio HTTP handler;
the ``/proc`` reads run in a worker thread, so a scrape never blocks supervision.

Every name starts with ``hubvisor_`` and is in base units (seconds, bytes). No label
takes an unbounded value: item ids never appear; agent ids do, since the spec bounds
them. ``docs/metrics.md`` lists every metric.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import time
from collections import Counter as Tally
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

try:
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Gauge,
        GCCollector,
        Histogram,
        PlatformCollector,
        ProcessCollector,
    )
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import generate_latest
except ImportError as exc:  # installed without hubvisor[metrics]: say so
    from ._extras import explain

    explain("metrics", exc)
    raise

from ._autoscaler import PoolScaled
from ._errors import ConfigError, HubvisorError
from ._events import (
    ChildExited,
    ChildHung,
    ChildRestarting,
    ChildSpawnFailed,
    ChildStarting,
    Event,
)
from ._limits import ChildOverLimit
from ._members import ChildState
from ._metrics_http import serve
from ._proc import GroupUsage, sample_groups
from ._registry import AgentStatus
from ._spec import AnySpec, PoolSpec, SupervisorSpec, agent_ids
from .work import (
    ItemStatus,
    WorkAssigned,
    WorkCancelled,
    WorkCompleted,
    WorkDeadLettered,
    WorkFailed,
    WorkReclaimed,
    WorkRefused,
    WorkSubmitted,
    WorkTimedOut,
)
from .work._deps import blocked_count

if TYPE_CHECKING:
    from ._hub import Hub, TreeRow

__all__ = ["CONTENT_TYPE", "STATUS_LABELS", "MetricsService", "parse_address", "status_label"]

_log = logging.getLogger("hubvisor")

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of the exposition (Prometheus text format 0.0.4)."""

_EVENT_KINDS: Final = (
    "starting",
    "spawn_failed",
    "hung",
    "exited",
    "restarting",
    "work_submitted",
    "work_assigned",
    "work_completed",
    "work_failed",
    "work_reclaimed",
    "work_dead",
    "work_refused",
    "work_cancelled",
    "work_timed_out",
    "over_limit",
    "scaled",
)
_TIME_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
"""Histogram buckets in seconds: from a quick item (5 ms) to an agent's hour of work."""
_MAX_TRACKED: Final = 100_000
"""Open items whose times are kept; beyond that the oldest are forgotten (no timing)."""
_REQUEST_TIMEOUT: Final = 10.0


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:9464"`` for IPv6) as ``(host, port)``; port 0: any free one.

    Raises:
        ConfigError: not ``HOST:PORT``, or the port is not 0..65535.
    """
    example = "write e.g. '127.0.0.1:9464' (port 0: any free port; 0.0.0.0: every interface)"
    if not isinstance(address, str):
        raise ConfigError(
            f"the metrics address must be a string HOST:PORT (got {address!r}); {example}"
        )
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"the metrics address {address!r} is not HOST:PORT; {example}")
    number = int(port)
    if number > 65535:
        raise ConfigError(f"the metrics port {number} in {address!r} is over 65535; {example}")
    return host, number


# --------------------------------------------------------------------------------------
# The service


@attrs.define
class _Open:
    """Times of one work item that has not ended, for the wait and run histograms."""

    agent_type: str
    queued_at: float | None
    assigned_at: float | None = None


class MetricsService:
    """A hub service serving Prometheus metrics over HTTP at ``http://ADDRESS/metrics``.

    Args:
        address: ``"HOST:PORT"`` to listen on; port 0 picks a free one (see
            :attr:`port` once the service has started).
        max_connections: connections served at once. One more is answered ``503
            Service Unavailable`` (``Retry-After: 1``) and closed at once, so a flood of
            connections holds at most this many of the hub's file descriptors.
        request_timeout: seconds a connection may take from its opening to the end of
            the answer (a slow or idle client is closed); the request head may be at
            most 8 KiB (longer: ``400``).

    ``registry`` is its own ``CollectorRegistry``: render it yourself with
    ``prometheus_client.generate_latest(service.registry)`` from the hub's trio thread,
    or ``await service.scrape()`` (which samples ``/proc`` first, in a thread).

    Example::

        metrics = MetricsService("127.0.0.1:9464")
        hub = Hub(spec, services=[metrics])
        # curl -s http://127.0.0.1:9464/metrics | grep hubvisor_work

    Raises:
        ConfigError: ``address`` is not ``HOST:PORT``.
    """

    name = "metrics"

    def __init__(
        self,
        address: str = "127.0.0.1:9464",
        *,
        max_connections: int = 16,
        request_timeout: float = _REQUEST_TIMEOUT,
    ) -> None:
        self.host, self.port = parse_address(address)
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigError(
                f"metrics: max_connections must be an int >= 1 (got {max_connections!r})"
            )
        if not isinstance(request_timeout, int | float) or not request_timeout > 0:
            raise ConfigError(
                f"metrics: request_timeout must be seconds > 0 (got {request_timeout!r})"
            )
        self.max_connections = max_connections
        """Connections served at once; one more is answered 503 and closed at once."""
        self.request_timeout = float(request_timeout)
        """Seconds a connection may take, from its opening to the end of the answer."""
        self.connections = 0
        """Connections open now."""
        self.connections_refused = 0
        """Connections answered 503 because ``max_connections`` were open."""
        self.registry = CollectorRegistry()
        """Every metric of this service (the event-fed ones and the hub's state)."""
        self.last_sample_seconds = 0.0
        """How long the last ``/proc`` sample took (wall-clock seconds)."""
        self._hub: Hub | None = None
        self._types: dict[str, str | None] = {}  # child id -> agent type
        self._hung: set[tuple[str, int]] = set()  # (child id, pid) found hung
        self._over: set[tuple[str, int]] = set()  # (child id, pid) stopped for a limit
        self._open: dict[str, _Open] = {}  # item id -> its times
        self._usage: dict[int, GroupUsage] = {}  # pgid -> usage, from the last sample
        self._sampling = trio.Lock()
        self._declare()

    def _declare(self) -> None:
        """Create the event-fed metrics in :attr:`registry`, and the scrape-time ones."""

        def counter(name: str, doc: str, labels: tuple[str, ...] = ("type",)) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self.restarts = counter(
            "hubvisor_restarts", "Restarts of children by their supervisors, by agent type."
        )
        self.exits = counter(
            "hubvisor_exits",
            "Processes that ended, by agent type and reason: stopped (asked to), hang, "
            "over_limit, exit_0, exit_nonzero, or the name of the signal that killed it "
            "(SIGKILL...).",
            ("type", "reason"),
        )
        self.spawn_failures = counter(
            "hubvisor_spawn_failures", "Children whose process could not be spawned at all."
        )
        self.failed_starts = counter(
            "hubvisor_failed_starts",
            "Processes that ended within their start period (or before READY).",
        )
        self.hangs = counter(
            "hubvisor_hangs", "Children found silent past their heartbeat timeout."
        )
        self.over_limit = counter(
            "hubvisor_over_limit",
            "Children stopped for going over a limit of their spec, by type and limit "
            "(memory, cpu).",
            ("type", "limit"),
        )
        self.scaled = counter(
            "hubvisor_pool_scaled",
            "Autoscaling resizes, by pool and action (grow, shrink).",
            ("pool", "action"),
        )
        self.submitted = counter("hubvisor_work_submitted", "Work items submitted, by type.")
        self.assigned = counter(
            "hubvisor_work_assigned", "Deliveries of work items to agents (attempts), by type."
        )
        self.completed = counter("hubvisor_work_completed", "Work items completed, by type.")
        self.failed = counter(
            "hubvisor_work_failed",
            "Failures agents reported, by type; final=true: not retried (status failed).",
            ("type", "final"),
        )
        self.reclaimed = counter(
            "hubvisor_work_reclaimed",
            "Items taken back from an agent and queued again, by type and reason "
            "(exit, hang, stop, handback, unreachable).",
            ("type", "reason"),
        )
        self.dead = counter(
            "hubvisor_work_dead_lettered", "Items that used up their deliveries, by type."
        )
        self.refused = counter(
            "hubvisor_work_refused",
            "Agents' answers the queue refused (stale attempts, items not held), by the "
            "agent's type.",
        )
        self.cancelled = counter("hubvisor_work_cancelled", "Work items cancelled, by type.")
        self.timed_out = counter("hubvisor_work_timed_out", "Attempts past their time limit.")
        self.wait_time = Histogram(
            "hubvisor_work_wait_seconds",
            "Seconds an item waited in its queue before an agent got it (per delivery).",
            ("type",),
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        self.run_time = Histogram(
            "hubvisor_work_run_seconds",
            "Seconds from a delivery to its end, by type and outcome (completed, failed, "
            "reclaimed, dead).",
            ("type", "outcome"),
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_HubCollector(self))
        _declare_process(self.registry)

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics`` (the bound port once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        """Serve as a hub service (see :class:`~supervisor.Service`).

        Raises:
            ConfigError: the address cannot be listened on (in use, not local...).
        """
        self._hub = hub
        for agent_type in _agent_types(hub):
            for c in (
                self.submitted,
                self.assigned,
                self.completed,
                self.dead,
                self.refused,
                self.restarts,
                self.failed_starts,
                self.hangs,
                self.spawn_failures,
                self.wait_time,
            ):
                c.labels(agent_type)  # a type with nothing yet shows 0, not nothing
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise ConfigError(
                f"metrics: cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                "pick a free port (or 0: any) and an address of this host"
            ) from None
        self.port = listeners[0].socket.getsockname()[1]
        with hub.bus.subscribe(kinds=_EVENT_KINDS) as events:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self._handle, listeners)
                _log.info("metrics: %s", self.url)
                task_status.started()
                async for event in events:
                    self.observe(event)

    # ----------------------------------------------------------------------------------
    # Events

    def observe(self, event: Event) -> None:
        """Count one event (the service calls it for every event it subscribed to)."""
        match event:
            case ChildStarting():
                self._types[event.child_id] = event.agent_type
            case ChildSpawnFailed():
                self.spawn_failures.labels(self._type_of(event.child_id)).inc()
            case ChildHung():
                self._hung.add((event.child_id, event.pid))
                self.hangs.labels(self._type_of(event.child_id)).inc()
            case ChildOverLimit():
                self._over.add((event.child_id, event.pid))
                self.over_limit.labels(self._type_of(event.child_id), event.limit).inc()
            case PoolScaled():
                self.scaled.labels(event.child_id, event.action).inc()
            case ChildExited():
                hung = (event.child_id, event.pid) in self._hung
                self._hung.discard((event.child_id, event.pid))
                agent_type = self._type_of(event.child_id)
                reason = _exit_reason(event, hung)
                if (event.child_id, event.pid) in self._over and not event.expected:
                    reason = "over_limit"
                self._over.discard((event.child_id, event.pid))
                self.exits.labels(agent_type, reason).inc()
                if event.failed_start:
                    self.failed_starts.labels(agent_type).inc()
            case ChildRestarting():
                self.restarts.labels(self._type_of(event.child_id)).inc()
            case WorkSubmitted():
                self._track(event.item_id, _Open(event.agent_type, event.at))
                self.submitted.labels(event.agent_type).inc()
            case WorkAssigned():
                item = self._item(event.item_id, event.child_id)
                self.assigned.labels(item.agent_type).inc()
                if item.queued_at is not None:
                    self.wait_time.labels(item.agent_type).observe(event.at - item.queued_at)
                item.queued_at, item.assigned_at = None, event.at
            case WorkCompleted():
                item = self._ended(event.item_id, event.child_id, "completed", event.at)
                self.completed.labels(item.agent_type).inc()
                self._open.pop(event.item_id, None)
            case WorkFailed():
                item = self._ended(event.item_id, event.child_id, "failed", event.at)
                self.failed.labels(item.agent_type, "true" if event.final else "false").inc()
                if event.final:
                    self._open.pop(event.item_id, None)
                else:
                    item.queued_at = event.at
            case WorkReclaimed():
                item = self._ended(event.item_id, event.child_id, "reclaimed", event.at)
                self.reclaimed.labels(item.agent_type, event.reason).inc()
                item.queued_at = event.at
            case WorkDeadLettered():
                item = self._ended(event.item_id, event.child_id, "dead", event.at)
                self.dead.labels(item.agent_type).inc()
                self._open.pop(event.item_id, None)
            case WorkCancelled():
                item = self._ended(event.item_id, event.child_id, "cancelled", event.at)
                self.cancelled.labels(item.agent_type).inc()
                self._open.pop(event.item_id, None)
            case WorkTimedOut():
                item = self._ended(event.item_id, event.child_id, "timed_out", event.at)
                self.timed_out.labels(item.agent_type).inc()
                item.queued_at = event.at
            case WorkRefused():
                # One event stands for ``repeats`` refusals (they are reported per interval).
                self.refused.labels(self._type_of(event.child_id)).inc(event.repeats)
            case _:
                pass

    def _type_of(self, child_id: str) -> str:
        if child_id not in self._types and self._hub is not None:
            # Never started (its first spawn failed) or a supervisor: ask the tree.
            for row in self._hub.which_children():
                if row.info.id == child_id:
                    self._types[child_id] = row.info.agent_type
            if child_id not in self._types:
                declared = _declared(self._hub).get(child_id)
                if declared is not None:
                    self._types[child_id] = declared
        return self._types.get(child_id) or ""

    def _track(self, item_id: str, item: _Open) -> _Open:
        self._open[item_id] = item
        while len(self._open) > _MAX_TRACKED:
            del self._open[next(iter(self._open))]
        return item

    def _item(self, item_id: str, agent_id: str) -> _Open:
        """The times of an open item; one the service has not seen submitted (retried
        from the dead letters, adopted from another hub) gets its type from the queue."""
        item = self._open.get(item_id)
        if item is not None:
            return item
        agent_type = None
        if self._hub is not None:
            with contextlib.suppress(HubvisorError):  # forgotten: the agent's type then
                agent_type = self._hub.work.get(item_id).agent_type
        return self._track(item_id, _Open(agent_type or self._type_of(agent_id), None))

    def _ended(self, item_id: str, agent_id: str, outcome: str, at: float) -> _Open:
        item = self._item(item_id, agent_id)
        if item.assigned_at is not None:
            self.run_time.labels(item.agent_type, outcome).observe(at - item.assigned_at)
            item.assigned_at = None
        return item

    # ----------------------------------------------------------------------------------
    # Scraping

    async def scrape(self) -> bytes:
        """Sample the agents' process groups (in a worker thread), then render every
        metric in the Prometheus text format."""
        return await trio.to_thread.run_sync(generate_latest, await self.collect())

    async def collect(self) -> _Families:
        """Sample the agents' process groups (in a worker thread), then collect every
        metric: a snapshot any ``prometheus_client`` encoder renders (``collect()``)."""
        async with self._sampling:
            pgids = [pid for _, _, pid in self._agents()]
            started = time.perf_counter()
            self._usage = await trio.to_thread.run_sync(sample_groups, pgids)
            self.last_sample_seconds = time.perf_counter() - started
        # Every metric is read here, on the hub's thread, in one step (no checkpoint);
        # only the formatting of that snapshot goes to a thread.
        return _Families([_uncreated(m) for m in self.registry.collect()])

    def _agents(self) -> Iterator[tuple[str, str, int]]:
        """``(agent id, type, pid)`` of every worker child with a live process."""
        if self._hub is None:
            return
        for row in self._hub.which_children():
            info = row.info
            if info.kind == "worker" and info.pid is not None:
                yield info.id, info.agent_type or "", info.pid

    async def _handle(self, stream: trio.SocketStream) -> None:
        if self.connections >= self.max_connections:
            self.connections_refused += 1
            if self.connections_refused in (1, 10, 100) or self.connections_refused % 1000 == 0:
                _log.warning(
                    "metrics: %d connections open, the most it serves (max_connections); "
                    "answering 503 to new ones (%d so far)",
                    self.connections,
                    self.connections_refused,
                )
            body = b"too many connections to hubvisor's metrics; retry shortly\n"
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
            ).encode()
            with (
                trio.move_on_after(1.0),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
            ):
                await stream.send_all(head + body)
            with trio.CancelScope(shield=True):
                await stream.aclose()
            return
        self.connections += 1
        try:
            async with stream:
                await self._serve(stream)
        finally:
            self.connections -= 1

    async def _serve(self, stream: trio.SocketStream) -> None:
        await serve(stream, self._hub, self.collect, self.request_timeout)


def _uncreated(metric: Metric) -> Metric:
    """``metric`` without its ``_created`` samples: in the text format each would be one
    more gauge series per label set, telling only when the service started counting."""
    kept = [s for s in metric.samples if not s.name.endswith("_created")]
    if len(kept) == len(metric.samples):
        return metric
    copy = Metric(metric.name, metric.documentation, metric.type, metric.unit)
    copy.samples = kept
    return copy


@attrs.frozen
class _Families:
    """Metric families already collected: formatting them touches nothing of the hub."""

    families: list[Metric]

    def collect(self) -> list[Metric]:
        return self.families


STATUS_LABELS: Final = frozenset(
    {s.value for s in AgentStatus} | {s.value for s in ChildState} | {"other"}
)
"""The values of ``hubvisor_agents{status}``: the registry's and the tree's own words;
any other word an agent says with ``STATUS=`` is counted as ``other`` (docs/bounds.md)."""


def status_label(status: str) -> str:
    """``status`` if it is one of :data:`STATUS_LABELS`, else ``"other"``."""
    return status if status in STATUS_LABELS else "other"


def _declare_process(registry: CollectorRegistry) -> None:
    """The hub's own process (``process_*``: CPU, memory, fds), its Python
    (``python_*``) and ``hubvisor_build_info``, in ``registry``."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Gauge(
        "hubvisor_build_info",
        "The hubvisor version serving these metrics (the value is always 1).",
        ("version",),
        registry=registry,
    ).labels(_version()).set(1)


def _version() -> str:
    try:
        return importlib.metadata.version("hubvisor")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "unknown"


def _exit_reason(event: ChildExited, hung: bool) -> str:
    """A bounded label for how a process ended."""
    if event.expected:
        return "stopped"
    if hung:
        return "hang"
    if event.status.signal is not None:
        return event.status.describe().removeprefix("killed by ").replace(" ", "_")
    return "exit_0" if event.status.code == 0 else "exit_nonzero"


def _declared(hub: Hub) -> dict[str, str | None]:
    """The agent type of every agent id the tree declares or may grow into (pool members
    up to ``max_size``), started or not."""
    types: dict[str, str | None] = {}
    for spec in _specs(hub):
        if isinstance(spec, SupervisorSpec):
            continue
        if isinstance(spec, PoolSpec):
            types.update(dict.fromkeys(agent_ids(spec), spec.agent_type))
        else:
            types[spec.id] = spec.agent_type
    return types


def _specs(hub: Hub) -> Iterator[AnySpec]:
    """Every spec of the tree, declared or started at run time (pools, not members)."""
    todo: list[AnySpec] = [hub.spec]
    for sup in hub.supervisors():
        if not isinstance(sup.spec, PoolSpec):  # a pool's children are its members
            todo.extend(sup.child_specs())
    while todo:
        spec = todo.pop()
        yield spec
        if isinstance(spec, SupervisorSpec):
            todo.extend(spec.children)


def _spec_types(hub: Hub) -> set[str]:
    """Every agent type the tree declares or may grow into."""
    return {t for s in _specs(hub) if not isinstance(s, SupervisorSpec) and (t := s.agent_type)}


def _agent_types(hub: Hub) -> set[str]:
    """Every agent type the tree declares, runs or may grow into."""
    types = {r.info.agent_type for r in hub.which_children() if r.info.agent_type}
    return types | _spec_types(hub)


class _HubCollector:
    """The metrics read from the hub at scrape time (a custom ``prometheus_client``
    collector; called on the hub's trio thread)."""

    def __init__(self, service: MetricsService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        hub = self.service._hub
        if hub is None:
            return
        rows = hub.which_children()
        yield from self._agents(hub, rows)
        yield from self._work(hub, rows)
        yield from self._hub_counts(hub)
        yield from self._mirror(hub)

    def _agents(self, hub: Hub, rows: list[TreeRow]) -> Iterator[Metric]:
        try:  # Unix time = the hub's clock + this offset
            offset: float | None = time.time() - trio.current_time()
        except RuntimeError:  # rendered outside trio: no clock to date heartbeats with
            offset = None
        records = {r.id: r for r in hub.registry.agents()}
        statuses: Tally[tuple[str, str]] = Tally()
        beat = GaugeMetricFamily(
            "hubvisor_agent_last_heartbeat_timestamp_seconds",
            "Unix time of the agent's last heartbeat, status message or READY.",
            labels=("agent", "type"),
        )
        cpu = CounterMetricFamily(
            "hubvisor_agent_cpu_seconds",
            "CPU seconds used by the agent's process group (this incarnation; resets on restart).",
            labels=("agent", "type"),
        )
        rss = GaugeMetricFamily(
            "hubvisor_agent_resident_bytes",
            "Resident memory of the agent's process group, summed over its processes.",
            labels=("agent", "type"),
        )
        procs = GaugeMetricFamily(
            "hubvisor_agent_processes",
            "Live processes in the agent's process group.",
            labels=("agent", "type"),
        )
        usage = self.service._usage
        for row in rows:
            info = row.info
            if info.kind != "worker":
                continue
            agent_type = info.agent_type or ""
            rec = records.get(info.id)
            status = rec.status if rec is not None else info.state.value  # busy: holds an item
            statuses[agent_type, status_label(str(status))] += 1
            labels = (info.id, agent_type)
            if offset is not None and rec is not None and rec.last_heartbeat is not None:
                beat.add_metric(labels, rec.last_heartbeat + offset)
            used = usage.get(info.pid) if info.pid is not None else None
            if used is not None:
                cpu.add_metric(labels, used.cpu_seconds)
                rss.add_metric(labels, used.resident_bytes)
                procs.add_metric(labels, used.processes)
        agents = GaugeMetricFamily(
            "hubvisor_agents", "Agents by type and status.", labels=("type", "status")
        )
        for (agent_type, status), n in sorted(statuses.items()):
            agents.add_metric((agent_type, status), n)
        yield agents
        yield beat
        yield cpu
        yield rss
        yield procs

    def _work(self, hub: Hub, rows: list[TreeRow]) -> Iterator[Metric]:
        counts: Tally[tuple[str, ItemStatus]] = Tally(
            (i.agent_type, i.status) for i in hub.work.items()
        )
        types = {r.info.agent_type for r in rows if r.info.agent_type}
        types |= _spec_types(hub) | {t for t, _ in counts}
        depth = GaugeMetricFamily(
            "hubvisor_work_queue_depth", "Work items waiting for an agent.", labels=("type",)
        )
        flight = GaugeMetricFamily(
            "hubvisor_work_in_flight", "Work items an agent holds now.", labels=("type",)
        )
        for t in sorted(types):
            depth.add_metric((t,), counts[t, ItemStatus.QUEUED])
            flight.add_metric((t,), counts[t, ItemStatus.ASSIGNED])
        yield depth
        yield flight
        yield _waiting_by_reason(hub, types)

    def _hub_counts(self, hub: Hub) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "hubvisor_events_dropped",
            "Events lost by bus subscribers that read too slowly.",
            value=hub.bus.dropped,
        )
        yield CounterMetricFamily(
            "hubvisor_output_dropped",
            "Output lines lost by output readers that fell behind.",
            value=hub.output_dropped,
        )
        yield CounterMetricFamily(
            "hubvisor_notify_rejected",
            "Notify messages from agents the hub rejected (malformed, reserved status...).",
            value=hub.agents.notify_rejected,
        )
        yield GaugeMetricFamily(
            "hubvisor_services_failed",
            "Hub services that raised and were left out.",
            value=len(hub.failed_services),
        )
        if hub.max_agents is not None:
            yield GaugeMetricFamily(
                "hubvisor_max_agents",
                "The most agents the hub may run at once.",
                value=hub.max_agents,
            )
        yield GaugeMetricFamily(
            "hubvisor_proc_sample_seconds",
            "Wall-clock seconds the last /proc sample of the agents' groups took.",
            value=self.service.last_sample_seconds,
        )

    def _mirror(self, hub: Hub) -> Iterator[Metric]:
        mirror: Any = hub.registry.mirror
        if mirror is None:
            return
        numbers: Mapping[str, tuple[str, str]] = {
            "flushes": ("hubvisor_registry_mirror_flushes", "Batches the mirror wrote."),
            "failures": ("hubvisor_registry_mirror_failures", "Batches that failed to write."),
            "outages": ("hubvisor_registry_mirror_outages", "Outages of the mirror's store."),
            "events_dropped": (
                "hubvisor_registry_mirror_events_dropped",
                "History events the mirror could not keep.",
            ),
        }
        for attr, (name, doc) in numbers.items():
            value = getattr(mirror, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                yield CounterMetricFamily(name, doc, value=value)
        connected = getattr(mirror, "connected", None)
        if isinstance(connected, bool):
            yield GaugeMetricFamily(
                "hubvisor_registry_mirror_up",
                "1 if the mirror's last flush succeeded.",
                value=int(connected),
            )


# --- ordering (issue 21) ---


def _waiting_by_reason(hub: Hub, types: set[str]) -> GaugeMetricFamily:
    """``hubvisor_work_waiting{type, reason}``: queued items by why they wait (``ready``,
    ``delayed``: a delay or a retry delay, ``dependencies``: ``--after``)."""
    gauge = GaugeMetricFamily(
        "hubvisor_work_waiting",
        "Queued work items by why they wait: ready (for an agent), delayed (for their time) "
        "or dependencies (for other items).",
        labels=("type", "reason"),
    )
    for t in sorted(types):
        gauge.add_metric((t, "ready"), int(hub.work.queue.depth(t)))
        gauge.add_metric((t, "delayed"), hub.work.delayed(t))
        gauge.add_metric((t, "dependencies"), blocked_count(hub.work.queue, t))
    return gauge


# --- end ordering ---
