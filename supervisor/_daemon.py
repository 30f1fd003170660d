"""The hub's composition: ``run_hub`` builds a hub from its parts (services, registry,
work store, control socket, signals) and runs it in the foreground.

The only module that knows every part; ``hubvisor run`` and ``hubvisor demo`` import it
when they start a hub (a client command never does). It names no concrete work store:
a store checks its own hub id.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import trio

from ._errors import ControlError, ServiceFailed, SupervisorEscalation
from ._hub import Hub, Service
from ._keeper import OrphanKeeper
from ._limits import LimitsService
from ._log import STOP_KINDS, log_events, log_kinds, log_stop_summary, logger
from ._registry import Registry
from ._spec import AnySpec, SupervisorSpec
from .control.events import EventRing
from .control.ops import ControlLimits
from .control.paths import SOCKET_ENV, default_socket_path
from .control.server import serve_control
from .work import WorkService

__all__ = ["run_hub"]

_LIMITS = ControlLimits()


async def _watch_signals(hub: Hub, nursery: trio.Nursery, result: dict[str, int]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stopping = False
        async for signum in signals:
            if not stopping:
                stopping = True
                logger.info(
                    "%s received: stopping the tree (Ctrl-C again to kill at once)",
                    signal.Signals(signum).name,
                )
                nursery.start_soon(hub.stop)
            elif signum == signal.SIGINT:
                logger.warning("second SIGINT: killing every child's process group now")
                result["code"] = 130
                hub.kill_all()


async def _run(
    hub: Hub,
    duration: float | None = None,
    output: bool = False,
    control_socket: Path | None = None,
    control_limits: ControlLimits | None = None,
    where: str = "",
) -> int:
    result = {"code": 0}
    events = hub.bus.subscribe(log_kinds(output))  # before serving: miss no event
    stop_events = hub.bus.subscribe(STOP_KINDS)
    async with trio.open_nursery() as outer:
        outer.start_soon(log_events, events)
        outer.start_soon(log_stop_summary, hub, stop_events)  # a line once the bus closes
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, hub, nursery, result)
            if control_socket is not None:
                serve = functools.partial(
                    serve_control,
                    limits=control_limits or ControlLimits(),
                    exit_code=lambda: result.get("final"),  # told to followers at the end
                )
                path = await nursery.start(serve, hub, control_socket)
                logger.info("control socket: %s (hubvisor ctl --socket %s list)", path, path)
            if where:  # after every check that may refuse the start: one line if one does
                logger.info("work: %s", where)
            if duration is not None:

                async def stop_later() -> None:
                    await trio.sleep(duration)
                    logger.info("--duration %gs reached: stopping the tree", duration)
                    await hub.stop()

                nursery.start_soon(stop_later)
            try:
                await hub.serve()
            except (SupervisorEscalation, ServiceFailed) as exc:
                logger.error("hubvisor: %s", exc)
                result["code"] = 1
            result["final"] = result["code"]
            nursery.cancel_scope.cancel()
        hub.bus.close()
    return result["code"]


def run_hub(
    spec: SupervisorSpec | Sequence[AnySpec],
    *,
    max_agents: int | None = None,
    duration: float | None = None,
    output: bool = False,
    control_socket: str | None = "auto",
    redis: str | None = None,
    redis_prefix: str = "hubvisor",
    services: Sequence[Service] = (),
    hub_id: str | None = None,
    lease: float = 10.0,
    metrics: str | None = None,
    control_max_connections: int = _LIMITS.max_connections,
    control_idle_timeout: float = _LIMITS.idle_timeout,
    metrics_max_connections: int = 16,
    work: Literal["memory", "sqlite"] | None = None,
    state_dir: str | None = None,
    fsync: Literal["normal", "always"] = "normal",
    redis_replicas: int = 0,
) -> int:
    """Run a tree in the foreground until Ctrl-C/SIGTERM (or ``duration``); the exit code.

    ``control_socket``: ``"auto"`` serves :mod:`hubvisor ctl <supervisor.control>` requests
    on the default path for the hub's id, a path serves them there, ``None`` disables it.
    ``redis``: keep the work in durable queues on this Redis (shared by every hub that uses
    it, each holding its items on a ``lease`` of seconds) and mirror the agent registry
    there, under ``redis_prefix`` (default: the registry lives in the hub's memory and the
    work as ``work`` says).
    ``hub_id``: the hub's id (default: the root spec's name); hubs sharing a Redis need
    different ones. ``metrics``: serve Prometheus metrics on this ``HOST:PORT``
    (:class:`~supervisor._metrics.MetricsService`). ``control_max_connections``,
    ``control_idle_timeout``: see :class:`~supervisor.control.ops.ControlLimits`;
    ``metrics_max_connections``: scrapes served at once.
    ``work``: where a hub without ``redis`` keeps its work: ``"sqlite"`` (the default) in
    a SQLite database in ``state_dir`` (default: ``$XDG_STATE_HOME/hubvisor/<hub id>/``,
    else ``~/.local/state/hubvisor/<hub id>/``), kept across restarts and crashes, each
    commit synced as ``fsync`` says (``"always"``: ``synchronous=FULL``, survives a power
    loss); ``"memory"``: in the hub's memory only, lost with it.
    ``redis_replicas``: with N > 0 a submit, a result or a dead letter counts as written
    only once ``WAIT N`` confirmed it (see :class:`~supervisor.work.redis.RedisWorkQueue`).
    """
    limits = ControlLimits(
        max_connections=control_max_connections, idle_timeout=control_idle_timeout
    )
    if metrics is not None:
        from ._metrics import MetricsService  # prometheus_client is imported only when used

        services = (*services, MetricsService(metrics, max_connections=metrics_max_connections))
    if redis_replicas and redis is None:  # issue 23: acknowledged means replicated
        raise ControlError("--redis-replicas N is for a hub with --redis (add --redis URL)")
    registry, service = _work_and_registry(
        work, state_dir, fsync, redis, redis_prefix, lease, redis_replicas
    )
    hub = Hub(
        spec,
        max_agents=max_agents,
        registry=registry,
        # No orphan ever: whatever the agents start dies when the hub does, however.
        services=[OrphanKeeper(), LimitsService(), EventRing(), *services],
        work=service,
        hub_id=hub_id,
    )
    store = hub.work.store
    try:
        if store is not None:
            # Refuses an id another live hub holds (Redis), a state directory another hub
            # uses or a database that cannot be opened (SQLite).
            store.check_hub_id(hub.hub_id)
            where = store.describe()
        else:
            where = (
                "kept in this hub's memory only (--work memory): queued and held items "
                "are lost when the hub stops"
            )
        socket_path = _agent_env(hub, control_socket, redis)
        return _run_in_trio(hub, duration, output, socket_path, limits, where)
    finally:
        if store is not None:
            store.close()


def _work_and_registry(
    work: str | None,
    state_dir: str | None,
    fsync: Literal["normal", "always"],
    redis: str | None,
    redis_prefix: str,
    lease: float,
    replicas: int = 0,
) -> tuple[Registry | None, WorkService | None]:
    """The registry and work service the options ask for (``None``: the hub's own
    in-memory one), or :class:`ControlError` for options that do not go together."""
    if redis is not None and (work is not None or state_dir is not None):
        raise ControlError(
            "--work and --state-dir are for a hub without --redis: with --redis URL the "
            "work lives in Redis (drop --work/--state-dir, or drop --redis)"
        )
    if work not in (None, "memory", "sqlite"):
        raise ControlError(f"work must be 'memory' or 'sqlite' (got {work!r})")
    if work == "memory" and state_dir is not None:
        raise ControlError(
            "--state-dir is where the SQLite store lives; --work memory keeps none (drop "
            "one of them)"
        )
    if redis is not None:
        # Only with --redis: redis-py and the mirror's modules are not a plain run's cost.
        from ._registry_redis import RedisMirror
        from .work.redis import RedisWorkQueue

        mirror = RedisMirror(redis, prefix=redis_prefix)
        logger.info("registry: mirrored to Redis at %s, prefix %r", mirror.url, redis_prefix)
        queue = RedisWorkQueue(redis, prefix=redis_prefix, lease=lease, replicas=replicas)
        return Registry(mirror=mirror), WorkService(queue)
    if work == "memory":
        return None, None
    from .work.sqlite import SqliteWorkQueue  # sqlite3 is imported only when used

    return None, WorkService(SqliteWorkQueue(state_dir, fsync=fsync))


def _run_in_trio(
    hub: Hub,
    duration: float | None,
    output: bool,
    socket_path: Path | None,
    limits: ControlLimits,
    where: str,
) -> int:
    # Not `except* ControlError: raise ...`: on Python 3.11.0-3.11.3 an exception raised
    # inside an except* block comes out wrapped in the group it replaced (CPython
    # gh-103590), and the CLI printed a 43-line ExceptionGroup instead of one line.
    # No exception is raised inside an except* block anywhere
    # (tests/control/test_bounds_and_safe_text.py).
    try:
        return trio.run(_run, hub, duration, output, socket_path, limits, where)
    except BaseExceptionGroup as group:
        found, rest = group.split(ControlError)
        if found is None or rest is not None:
            raise  # something else went wrong too: show all of it
        error = _first_leaf(found)
    raise error from None


def _agent_env(hub: Hub, control_socket: str | None, redis: str | None) -> Path | None:
    """The control socket's path (``None``: none), put in the agents' environment with
    the Redis URL, if any."""
    socket_path = (
        None
        if control_socket is None
        else default_socket_path(hub.hub_id)
        if control_socket == "auto"
        else Path(control_socket)
    )
    if socket_path is not None:
        # Agents that run `hubvisor submit ...` themselves reach their own hub.
        hub.agents.add_env({SOCKET_ENV: str(socket_path)}, replace=False)
    if redis is not None:
        # Agents that keep their own state in Redis find the hub's (agents.BaseAgent reads
        # it as redis_url).
        hub.agents.add_env({"REDIS_URL": redis}, replace=False)
    return socket_path


def _first_leaf(group: BaseExceptionGroup[ControlError]) -> ControlError:
    """The first exception in ``group``, however deeply the nurseries nested it."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
