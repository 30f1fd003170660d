"""What each control op does inside the hub, keyed by the op's name.

:data:`HANDLERS` answers the ops that give one answer, :data:`STREAMS` the streaming
ones (they put items into a :class:`Stream`), :data:`BUDGETS` says how long the slow ones
may take. The op table (:mod:`supervisor.control.ops`) declares the ops; a test checks
that these tables and the printers cover every one.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .._errors import ChildNotFound, ControlError, WaitTimeout
from .._spec import BRUTAL_KILL, AnySpec, ChildSpec, PoolSpec
from ..work import FINAL, ItemStatus
from ..work._deps import blocked_count
from .ops import SCHEMA_VERSION, Args, parse_request
from .stream import Stream

if TYPE_CHECKING:
    from .._hub import Hub

__all__ = ["BUDGETS", "HANDLERS", "STREAMS", "Budget", "Handler", "Stream", "StreamHandler"]


Handler = Callable[["Hub", Args, trio.Nursery], Awaitable[Any]]
"""``run(hub, args, background)`` carries a request out; ``args`` are the validated fields;
``background`` is a nursery for work that outlives the answer."""
StreamHandler = Callable[["Hub", Args, Stream], Awaitable[None]]
"""``stream(hub, args, out)`` puts items into ``out`` and returns when the stream is over;
raising :class:`ControlError` ends the stream with that error."""
Budget = Callable[["Hub", Args], float]
"""``budget(hub, args)``: the longest the op may take inside the hub, in seconds."""


def _rows(hub: Hub) -> list[dict[str, Any]]:
    return [
        {
            "supervisor": row.supervisor,
            "id": row.info.id,
            "kind": row.info.kind,
            "state": row.info.state.value,
            "pid": row.info.pid,
            "restarts": row.info.restarts,
            "uptime": row.info.uptime,
            "agent_type": row.info.agent_type,
            "last_exit": row.info.last_exit,
        }
        for row in hub.which_children()
    ]


async def _list(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return _rows(hub)


async def _count(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return hub.count_children()


async def _logs(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    _owner(hub, args["id"])
    return hub.logs(args["id"], args.get("lines"))


async def _terminate(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    _owner(hub, args["id"])
    await hub.terminate_child(args["id"])


async def _restart(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    _owner(hub, args["id"])
    await hub.restart_child(args["id"])


def _pool(hub: Hub, name: str) -> Any:
    try:
        return hub.supervisor(name)
    except ChildNotFound as exc:
        if not str(exc).startswith("no "):
            raise  # more than one: its message lists them
        raise ControlError(_no_pool(hub, name)) from None


def _no_pool(hub: Hub, name: str) -> str:
    """Why ``name`` does not scale, and the names that do: the agent types of pools
    only (fixed agents of a type have no pool to resize)."""
    pools = {s.spec.agent_type for s in hub.supervisors() if isinstance(s.spec, PoolSpec)}
    choices = ", ".join(sorted(t for t in pools if t)) or "the hub has no pools"
    fixed = (
        f"the {name!r} agents are fixed children, not a pool, so they do not scale; "
        if name in _agent_types(hub)
        else ""
    )
    return (
        f"no pool {name!r} in the hub; {fixed}give a pool's agent type ({choices}), or a "
        "pool's name or path (`hubvisor ctl list`)"
    )


async def _resize(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    _pool(hub, args["pool"])
    await hub.resize(args["pool"], args["size"])


async def _stop(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    background.start_soon(hub.stop)
    return "stopping"


async def _budget(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    op, op_args = parse_request(args["request"])
    return BUDGETS[op.name](hub, op_args) if op.budget else 0.0


def _owner(hub: Hub, child_id: str) -> Any:
    """``hub.owner(child_id)``, with an error that says how to list the agents."""
    try:
        return hub.owner(child_id)
    except ChildNotFound:
        raise ControlError(
            f"no child {child_id!r} in the hub; `hubvisor status` lists the agents "
            "(`hubvisor ctl list` every child)"
        ) from None


async def _status(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    now = trio.current_time()
    records = {r.id: r for r in hub.registry.agents()}
    agents = []
    for row in hub.which_children():
        info = row.info
        if info.kind != "worker":
            continue
        rec = records.get(info.id)
        beat = None if rec is None or rec.last_heartbeat is None else now - rec.last_heartbeat
        assignment = hub.work.assignment(info.id)
        # One answer to "is it busy": the registry's (busy while it holds an item).
        status = rec.status if rec is not None else info.state.value
        agents.append(
            {
                "id": info.id,
                "type": info.agent_type,
                "supervisor": row.supervisor,
                "pid": info.pid,
                "status": status,
                "uptime": info.uptime,
                "restarts": info.restarts,
                "heartbeat_age": None if beat is None else round(beat, 3),
                "assignment": assignment,
                "last_exit": info.last_exit,
            }
        )
    counts: Counter[str] = Counter()
    queues: dict[str, Counter[str]] = {}
    for item in hub.work.items():
        counts[item.status] += 1
        if item.status in (ItemStatus.QUEUED, ItemStatus.ASSIGNED):
            queues.setdefault(item.agent_type, Counter())[item.status] += 1
    result = {
        "schema_version": SCHEMA_VERSION,
        "hub": {
            "id": hub.hub_id,
            "pid": os.getpid(),
            "agents": len(agents),
            "work": {str(s): counts.get(str(s), 0) for s in ItemStatus},
            "store": _store(hub),
            "queues": {
                t: {"queued": c[ItemStatus.QUEUED], "assigned": c[ItemStatus.ASSIGNED]}
                for t, c in sorted(queues.items())
            },
        },
        "agents": agents,
    }
    for agent_type, queue in result["hub"]["queues"].items():  # type: ignore[index]
        queue["delayed"] = hub.work.delayed(agent_type)  # issue 21: of the queued
        queue["blocked"] = blocked_count(hub.work.queue, agent_type)  # waiting on others
    scaling = hub.autoscaler.status()
    if scaling:
        result["scaling"] = scaling
    if args.get("cluster"):
        result["cluster"] = await hub.work.cluster()
    return result


def _agent_types(hub: Hub) -> set[str]:
    """Every agent type the tree runs or may grow (a pool resized to 0 counts)."""
    types = {r.info.agent_type for r in hub.which_children() if r.info.agent_type}
    for sup in hub.supervisors():
        if isinstance(sup.spec, PoolSpec) and sup.spec.agent_type:
            types.add(sup.spec.agent_type)
    return {t for t in types if t}


def _store(hub: Hub) -> str:
    """Where the hub keeps its work, in a few words."""
    store = hub.work.store
    return "kept in this hub's memory only" if store is None else store.describe()


async def _submit(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    types = _agent_types(hub)
    # With a shared store another hub may run the type; alone, the item would never go.
    if args["type"] not in types and hub.work.store is None:
        raise ControlError(
            f"no agents of type {args['type']!r} in the hub, so the item would wait forever; "
            f"the types are {', '.join(sorted(types)) or '(none)'} (`hubvisor status`)"
        )
    item = hub.work.submit(
        args["type"],
        args["payload"],
        max_deliveries=args.get("max_deliveries"),
        source="cli",
        **_submit_controls(args),
        **_ordering_args(args),
        **_cancel_options(args),
    )
    # Durable before the answer when a store keeps the work (SQLite, Redis): a "submitted"
    # that only lived in the hub's memory could be lost with it. During an outage of the
    # store the hub holds it and says so.
    stored = await hub.work.stored(item.id)
    item = await hub.work.resolve(item)  # a key Redis had: the kept item
    return {**item.to_json(), "stored": stored}


def _submit_controls(args: Args) -> dict[str, Any]:
    """The submit's ``key``/``after``/``require`` (issue 21), those given only;
    ``after`` may repeat and each value may list ids split by commas."""
    controls: dict[str, Any] = {}
    if args.get("key") is not None:
        controls["key"] = args["key"]
    if args.get("after"):
        controls["after"] = [i for a in args["after"] for i in a.split(",") if i]
    if args.get("require"):
        controls["require"] = list(args["require"])
    return controls


def _ordering_args(args: Args) -> dict[str, Any]:
    """The submit's priority, delay and not_before, those given (issue 21)."""
    return {k: args[k] for k in ("priority", "delay", "not_before") if args.get(k) is not None}


async def _work_list(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return [item.to_json() for item in hub.work.items(args.get("status"))]


async def _work_show(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return (await hub.work.fetch(args["id"])).to_json()


async def _work_retry(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return (await hub.work.retry_any(args["id"])).to_json()


# -- cancel and time limits (issue 21) --


def _cancel_options(args: Args) -> dict[str, Any]:
    """The submit options of cancel and time limits the request gives."""
    return {"time_limit": args["time_limit"]} if args.get("time_limit") is not None else {}


async def _work_cancel(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return (await hub.work.cancel_any(args["id"], args.get("reason") or "")).to_json()


async def _work_wait(hub: Hub, args: Args, out: Stream) -> None:
    """Each item once it has ended, in the order they end (those ended already first);
    at the timeout, each one not ended yet as it is then (``final`` false)."""
    ids = list(dict.fromkeys(args["ids"]))  # each once
    timeout = args.get("timeout")
    deadline = None if timeout is None else trio.current_time() + timeout
    if not ids:
        raise ControlError(
            'work_wait needs one item id or more, e.g. {"op": "work_wait", "ids": ["worker-1"]}'
        )
    items = [await hub.work.fetch(item_id) for item_id in ids]  # an unknown id: no wait
    pending = [item.id for item in items if item.status not in FINAL]
    hub.work.check_waiters(len(pending))  # all of them or none
    for item in items:
        if item.status in FINAL:
            out.backlog(item.to_json())
    failure: list[Exception] = []

    async def wait(item_id: str) -> None:
        left = None if deadline is None else max(0.0, deadline - trio.current_time())
        try:
            item = await hub.work.wait(item_id, left)
        except WaitTimeout as exc:
            item = exc.items[0]
        except Exception as exc:  # e.g. the hub stopped: the first error ends them all, and
            failure.append(exc)  # is the answer itself (not a group of the tasks' errors)
            nursery.cancel_scope.cancel()
            return
        out.backlog(item.to_json())  # never dropped: at most one per id asked for

    async with trio.open_nursery() as nursery:
        for item_id in pending:
            nursery.start_soon(wait, item_id)
    if failure:
        raise failure[0]


async def _tail(hub: Hub, args: Args, out: Stream) -> None:
    child_id, lines = args["id"], args.get("lines")
    _owner(hub, child_id)
    if not args.get("follow"):
        for at, line in hub.timed_logs(child_id, lines):
            out.backlog({"at": at, "id": child_id, "line": line})
        return
    # The tap opens and the kept lines are read in one step: no line is missed or doubled.
    with hub.tap_output() as tap:
        for at, line in hub.timed_logs(child_id, lines):
            out.backlog({"at": at, "id": child_id, "line": line})
        async for new in tap:
            if new.child_id == child_id:  # every incarnation of the agent: the same id
                out.send({"at": new.at, "id": child_id, "line": new.line})


async def _events(hub: Hub, args: Args, out: Stream) -> None:
    if out.ring is None:  # pragma: no cover - serve_control always has one
        raise ControlError("this hub keeps no events (its control server did not start)")
    await out.ring.stream(hub, args, out)


def _stop_time(spec: AnySpec) -> float:
    """The longest a graceful stop of ``spec`` takes (a supervisor stops in order)."""
    if isinstance(spec, ChildSpec):
        return 0.0 if spec.shutdown == BRUTAL_KILL else float(spec.shutdown)
    if isinstance(spec, PoolSpec):
        return _stop_time(spec.template)  # members stop at once
    return sum(_stop_time(c) for c in spec.children)


def _child_stop_time(hub: Hub, args: Args) -> float:
    owner = _owner(hub, args["id"])
    spec = owner.spec
    if isinstance(spec, PoolSpec):
        return _stop_time(spec.template)
    for child in spec.children:
        if child.id == args["id"]:
            return _stop_time(child)
    return _stop_time(hub.spec)  # started at run time: the whole tree bounds it


def _pool_stop_time(hub: Hub, args: Args) -> float:
    spec = _pool(hub, args["pool"]).spec
    return _stop_time(spec.template) if isinstance(spec, PoolSpec) else 0.0


HANDLERS: dict[str, Handler] = {
    "list": _list,
    "count": _count,
    "logs": _logs,
    "terminate": _terminate,
    "restart": _restart,
    "resize": _resize,
    "stop": _stop,
    "status": _status,
    "submit": _submit,
    "work_list": _work_list,
    "work_show": _work_show,
    "work_retry": _work_retry,
    "work_cancel": _work_cancel,
    "budget": _budget,
}
"""The handler of each op that gives one answer, by the op's name."""

STREAMS: dict[str, StreamHandler] = {"tail": _tail, "events": _events, "work_wait": _work_wait}
"""The handler of each streaming op, by the op's name."""

BUDGETS: dict[str, Budget] = {
    "terminate": _child_stop_time,
    "restart": _child_stop_time,
    "resize": _pool_stop_time,
}
"""How long each op declared with ``budget=True`` may take inside the hub."""
