"""A local control socket for a running hub, and the client ``hubvisor ctl`` uses.

The hub listens on a Unix stream socket (mode 0600; by default in a private 0700
directory, so only its user can talk to it). Each request is one JSON object on one line;
each answer is one JSON line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
"..."}``. Anything malformed (bytes that are not UTF-8 or JSON, JSON nested too deeply, a
line longer than 64 KiB, unknown ops or fields, values of the wrong type) gets an error
answer; the hub keeps running and the connection stays usable.

The operations are one table, :data:`OPS`: each :class:`Op` names its fields (type,
bounds, help), the :class:`~supervisor.Hub` call that carries it out, how long it may
take, and how ``hubvisor ctl`` prints its result. The socket's dispatch, the ``ctl``
subcommands and the top-level commands (``hubvisor status``, ``work list``...) are all
built from it, so adding an operation is adding one entry. See ``docs/control.md``.

A *streaming* op (``logs -f``, ``events -f``) answers with one ``{"ok": true, "item":
...}`` line per item instead of one answer; see :class:`Stream`.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import errno
import json
import math
import os
import re
import socket
import stat
import tempfile
import time
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import click
import trio
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._errors import ChildNotFound, ControlError, HubvisorError
from ._events import Event, check_kinds
from ._hub import Hub
from ._log import logger
from ._spec import BRUTAL_KILL, AnySpec, ChildSpec, PoolSpec
from .work import ItemStatus

__all__ = [
    "OPS",
    "ControlClientError",
    "ControlLimits",
    "Field",
    "HubBusy",
    "NoHubRunning",
    "Op",
    "Stream",
    "default_socket_path",
    "parse_request",
    "request",
    "serve_control",
    "stream",
]

_MAX_LINE = 64 * 1024
"""The longest request line the hub reads; a longer one is answered with an error."""
_MAX_ANSWER = 256 * 1024 * 1024
"""The longest answer the client reads (a ``list`` of a very large tree is a few MiB)."""
FAST_TIMEOUT = 30.0
"""Seconds the client waits for an answer, plus what a slow op may take in the hub."""


@attrs.frozen
class ControlLimits:
    """The bounds of the control server: what one client (or a flood of them) may hold.

    Attributes:
        max_connections: connections served at once. One more is accepted, answered
            ``{"ok": false, "busy": true, "error": ...}`` and closed at once, so the hub
            holds at most this many control sockets (plus the one it is refusing) and a
            client never hangs in the kernel's backlog; :func:`request` and
            :func:`stream` retry a busy hub until their timeout.
        idle_timeout: seconds a connection may wait between requests (from its opening
            or its last answer to the first byte of the next request) before the hub
            closes it, with an error line saying so. A following stream (``-f``) is not
            idle: it lasts until the client closes it.
        request_timeout: seconds a request line may take to arrive, from its first byte
            to its newline, and an answer to be taken by the client; past it the hub
            closes the connection (a slow or stuck client cannot hold a slot).

    The longest request line is 64 KiB (a longer one is answered with an error and
    skipped); a stream holds at most 1000 new items for a slow reader (:class:`Stream`).
    """

    max_connections: int = 64
    idle_timeout: float = 10.0
    request_timeout: float = 10.0

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.max_connections, int) or self.max_connections < 1:
            raise ValueError(f"max_connections must be an int >= 1 (got {self.max_connections!r})")
        for name in ("idle_timeout", "request_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0 (got {value!r})")


Args = Mapping[str, Any]


class ControlClientError(HubvisorError):
    """The control socket could not be reached, or the hub refused the request."""


class NoHubRunning(ControlClientError):
    """Nothing listens at the control socket (no file there, or a dead hub's file)."""


class HubBusy(ControlClientError):
    """The hub serves as many control connections as it may (:class:`ControlLimits`)."""


# --------------------------------------------------------------------------------------
# Where the socket lives


def _default_base() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "hubvisor"
    return Path(tempfile.gettempdir()) / f"hubvisor-{os.getuid()}"


def default_socket_path(hub_id: str) -> Path:
    """``$XDG_RUNTIME_DIR/hubvisor/<hub_id>.sock``, or under ``/tmp/hubvisor-<uid>/``."""
    return _default_base() / f"{hub_id}.sock"


def _check_private_dir(directory: Path, error: type[Exception], option: str) -> None:
    """Refuse a default socket directory someone else could control.

    ``/tmp/hubvisor-<uid>`` can be created by any user before us; a hub or client that
    used it would hand the control socket (or the requests) to that user.
    """
    fix = f"or pass {option} PATH to use a socket elsewhere"
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise error(f"cannot inspect the control directory {directory}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise error(
            f"the control directory {directory} is a symlink, not a private directory; "
            f"remove it (rm {directory}) if you did not make it, {fix}"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise error(
            f"the control directory {directory} is not a directory; remove it (rm {directory}), "
            f"{fix}"
        )
    uid = os.getuid()
    if st.st_uid != uid:
        raise error(
            f"the control directory {directory} belongs to uid {st.st_uid}, not to you "
            f"(uid {uid}): another user could read or answer your control requests; have "
            f"it removed (as root: rm -r {directory}), set XDG_RUNTIME_DIR to a private "
            f"directory, {fix}"
        )
    if st.st_mode & 0o077:
        raise error(
            f"the control directory {directory} has mode {stat.S_IMODE(st.st_mode):04o}; it "
            f"must be private so only you reach the control socket: chmod 700 {directory}, {fix}"
        )


# --------------------------------------------------------------------------------------
# The table of operations


_KIND_NAMES: dict[type, str] = {
    int: "int",
    str: "string",
    dict: "object",
    bool: "boolean",
    list: "list of strings",
    object: "JSON value",
}


def _show_value(value: object) -> str:
    """A short description of a request value for an error message (never huge)."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON array"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


@attrs.frozen
class Field:
    """One field of a control request.

    Attributes:
        name: the JSON key, and the ``hubvisor ctl`` argument or option name.
        kind: ``int``, ``str``, ``bool``, ``dict`` (a JSON object), ``list`` (of strings)
            or ``object`` (any JSON value); ``bool`` is never an ``int``.
        help: what the field means (``ctl --help`` shows it).
        example: a valid value, shown in error messages as the fix.
        required: whether a request must carry it (``null`` counts as absent).
        minimum: the smallest value of an ``int`` field.
        flag: the command's option for it (e.g. ``"-n"``, or ``"--kind"`` used alone);
            without one it is an argument. A ``bool`` field is an on/off flag, a ``list``
            field an option that may be repeated.
        metavar: how ``--help`` names the argument.
        choices: the values a ``str`` field may take (``None``: any).
    """

    name: str
    kind: type
    help: str
    example: object
    required: bool = True
    minimum: int | None = None
    flag: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    def describe(self) -> str:
        """E.g. ``an int >= 0``."""
        name = _KIND_NAMES[self.kind]
        text = f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
        if self.minimum is not None:
            text += f" >= {self.minimum}"
        if self.choices is not None:
            text += f" (one of {', '.join(self.choices)})"
        return text

    def _valid(self, value: object) -> bool:
        if self.kind is object:
            return True
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is list:
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not isinstance(value, self.kind) or isinstance(value, bool):
            return False
        if self.minimum is not None:
            assert isinstance(value, int)
            return value >= self.minimum
        return self.choices is None or value in self.choices

    def check(self, op: Op, value: object) -> object:
        """``value`` if it is valid for this field, else a :class:`ControlError` saying so."""
        if not self._valid(value):
            raise ControlError(
                f"request {op.name!r}: {self.name!r} must be {self.describe()} (got "
                f"{_show_value(value)}); send {self.name!r} as a {self.kind.__name__}, e.g. "
                f"{op.example()}"
            )
        return value


def _echo_result(result: Any, args: Args) -> None:
    click.echo(result)


async def _streams_only(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    raise ControlError("this op streams; it has no single answer")  # pragma: no cover


class Stream:
    """Where a streaming op's handler puts its items: the hub writes each as one line.

    Never blocks. :meth:`backlog` items (what the hub already keeps: the recent lines or
    events a stream starts with) are always sent; :meth:`send` items (new ones, as they
    happen) are dropped while ``limit`` items wait for a slow client, so a client that
    reads slowly (or not at all) costs the hub at most ``limit`` items. The client learns
    how many it lost, and where: ``{"ok": true, "dropped": N}`` comes before the first
    item after the gap.
    """

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.dropped = 0
        """New items lost so far because the client read too slowly."""
        self._gap = 0
        self._send, self._receive = trio.open_memory_channel[tuple[int, Any]](math.inf)

    def backlog(self, item: Any) -> None:
        """Queue an item the hub already holds (never dropped)."""
        self._send.send_nowait((self._gap, item))
        self._gap = 0

    def send(self, item: Any) -> bool:
        """Queue a new item, or drop it (and count it) if the client is ``limit`` behind."""
        if self._send.statistics().current_buffer_used >= self.limit:
            self._gap += 1
            self.dropped += 1
            return False
        self.backlog(item)
        return True


Handler = Callable[[Hub, Args, trio.Nursery], Awaitable[Any]]
StreamHandler = Callable[[Hub, Args, Stream], Awaitable[None]]


@attrs.frozen
class Op:
    """One control operation: its fields, its handler on the hub and its ``ctl`` output.

    Attributes:
        name: the request's ``"op"`` and the ``hubvisor ctl`` subcommand.
        help: the subcommand's help text (first line: its summary).
        run: ``run(hub, args, background)`` carries the request out; ``args`` are the
            validated fields; ``background`` is a nursery for work that outlives the answer.
        fields: the request's fields; any other key is refused.
        show: prints the result for ``hubvisor ctl`` (``--json`` prints it raw instead);
            for a streaming op, each item.
        budget: ``budget(hub, args)``, the longest the op may take inside the hub (e.g. a
            child's shutdown time); the client waits that long on top of its own timeout.
            ``None``: the op answers at once.
        command: whether ``hubvisor ctl`` offers it.
        stream: makes it a streaming op (instead of ``run``): ``stream(hub, args, out)``
            puts items into ``out`` (a :class:`Stream`) and returns when the stream is
            over; when ``args["follow"]`` is true it runs until the client closes the
            connection (it is cancelled then). Raising :class:`ControlError` ends the
            stream with that error.
        cli: the top-level command that runs it too, e.g. ``"work list"``
            (``hubvisor work list``); ``None``: only ``hubvisor ctl NAME``.
    """

    name: str
    help: str
    run: Handler = _streams_only
    fields: tuple[Field, ...] = ()
    show: Callable[[Any, Args], None] = _echo_result
    budget: Callable[[Hub, Args], float] | None = None
    command: bool = True
    stream: StreamHandler | None = None
    cli: str | None = None

    def example(self) -> str:
        """A valid request of this op, as JSON."""
        return json.dumps(
            {"op": self.name, **{f.name: f.example for f in self.fields if f.required}}
        )

    def parse(self, req: Mapping[str, Any]) -> dict[str, Any]:
        """The validated fields of ``req`` (``"op"`` removed), or a :class:`ControlError`."""
        known = {f.name for f in self.fields}
        unknown = sorted(str(k) for k in req if k != "op" and k not in known)
        if unknown:
            takes = ", ".join(repr(f.name) for f in self.fields) or "no other field"
            raise ControlError(
                f"request {self.name!r} has no field {_show_value(unknown[0])}; it takes "
                f"{takes}, e.g. {self.example()}"
            )
        args: dict[str, Any] = {}
        for f in self.fields:
            value = req.get(f.name)
            if value is None:
                if f.required:
                    raise ControlError(
                        f"request {self.name!r} needs {f.name!r} ({f.help}): "
                        f"{f.describe()}, e.g. {self.example()}"
                    )
                continue
            args[f.name] = f.check(self, value)
        return args


def parse_request(req: object) -> tuple[Op, dict[str, Any]]:
    """The op and validated arguments of a decoded request, or a :class:`ControlError`."""
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise ControlError(
            f'a request is a JSON object like {{"op": "list"}} (got {_show_value(req)}); '
            f"the ops are {', '.join(OPS)}"
        )
    op = OPS.get(req["op"])
    if op is None:
        raise ControlError(f"unknown op {_show_value(req['op'])}; the ops are {', '.join(OPS)}")
    return op, op.parse(req)


# Handlers ------------------------------------------------------------------------------


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
        types = ", ".join(sorted(_agent_types(hub))) or "(none)"
        raise ControlError(
            f"no pool {name!r} in the hub; give an agent type ({types}), or a pool's name "
            "or path (`hubvisor ctl list`)"
        ) from None


async def _resize(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    _pool(hub, args["pool"])
    await hub.resize(args["pool"], args["size"])


async def _stop(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    background.start_soon(hub.stop)
    return "stopping"


async def _budget(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    op, op_args = parse_request(args["request"])
    return 0.0 if op.budget is None else op.budget(hub, op_args)


def _owner(hub: Hub, child_id: str) -> Any:
    """``hub.owner(child_id)``, with an error that says how to list the agents."""
    try:
        return hub.owner(child_id)
    except ChildNotFound:
        raise ControlError(
            f"no child {child_id!r} in the hub; `hubvisor status` lists the agents "
            "(`hubvisor ctl list` every child)"
        ) from None


SCHEMA_VERSION = 1
"""The version of ``hubvisor status --json``; it grows when a field changes meaning."""


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
        status = rec.status if rec is not None else info.state.value
        if assignment is not None and status == "idle":
            status = "busy"  # the hub gave it work: whatever it last said, it is busy
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
            "id": hub.context.hub_id,
            "pid": os.getpid(),
            "agents": len(agents),
            "work": {str(s): counts.get(str(s), 0) for s in ItemStatus},
            "queues": {
                t: {"queued": c[ItemStatus.QUEUED], "assigned": c[ItemStatus.ASSIGNED]}
                for t, c in sorted(queues.items())
            },
        },
        "agents": agents,
    }
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


async def _submit(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    types = _agent_types(hub)
    # With a shared store another hub may run the type; alone, the item would never go.
    if args["type"] not in types and hub.work.store is None:
        raise ControlError(
            f"no agents of type {args['type']!r} in the hub, so the item would wait forever; "
            f"the types are {', '.join(sorted(types)) or '(none)'} (`hubvisor status`)"
        )
    item = hub.work.submit(
        args["type"], args["payload"], max_deliveries=args.get("max_deliveries"), source="cli"
    )
    # Durable before the answer when a store keeps the work (Redis): a "submitted" that
    # only lived in the hub's memory could be lost with it. During a Redis outage the hub
    # holds it and says so.
    stored = await hub.work.stored(item.id)
    return {**item.to_json(), "stored": stored}


async def _work_list(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return [item.to_json() for item in hub.work.items(args.get("status"))]


async def _work_show(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return (await hub.work.fetch(args["id"])).to_json()


async def _work_retry(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return (await hub.work.retry_any(args["id"])).to_json()


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
    ring = _rings.get(hub)
    if ring is None:  # pragma: no cover - serve_control always starts one
        raise ControlError("this hub keeps no events (its control server did not start)")
    try:
        kinds = check_kinds(args.get("kinds"))
    except HubvisorError as exc:
        raise ControlError(str(exc)) from None
    kept = [e for e in ring.kept if kinds is None or e["kind"] in kinds]
    lines = args.get("lines")
    # The last ``lines`` of them, or all when fewer are kept (``kept[len(kept) - lines:]``
    # started at a negative index then, and kept too few: 2 of 4 for ``-n 6``).
    for event in kept if lines is None else kept[-lines:] if lines else []:
        out.backlog(event)
    if args.get("follow"):
        with ring.follow(out, kinds):
            await trio.sleep_forever()


NOISY_KINDS = frozenset({"output", "heartbeat"})
"""Event kinds the event ring does not keep and ``events`` shows only when named."""
EVENTS_KEPT = 1000
"""How many recent events the control server keeps for ``hubvisor events``."""


def _plain(inst: Any, field: Any, value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str | list | tuple | dict):
        return value
    return value if attrs.has(type(value)) else str(value)


def event_json(event: Event, wall: float) -> dict[str, Any]:
    """An event as a JSON-ready dict: ``kind``, ``time`` (Unix time), then its fields."""
    fields = attrs.asdict(event, value_serializer=_plain)
    return {"kind": event.kind, "time": round(wall, 6), **fields}


class _EventRing:
    """The last :data:`EVENTS_KEPT` events of a hub, and the ``events -f`` streams."""

    def __init__(self, hub: Hub, keep: int = EVENTS_KEPT) -> None:
        self.hub = hub
        self.kept: deque[dict[str, Any]] = deque(maxlen=keep)
        self._followers: list[tuple[Stream, frozenset[str] | None]] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        events = self.hub.bus.subscribe()
        task_status.started()
        with events:
            async for event in events:
                self._add(event)

    def _add(self, event: Event) -> None:
        noisy = event.kind in NOISY_KINDS
        wanted = [
            out
            for out, kinds in self._followers
            if (kinds is None and not noisy) or (kinds is not None and event.kind in kinds)
        ]
        if noisy and not wanted:
            return
        wall = time.time() - max(0.0, trio.current_time() - event.at)
        data = event_json(event, wall)
        if not noisy:
            self.kept.append(data)
        for out in wanted:
            out.send(data)

    @contextlib.contextmanager
    def follow(self, out: Stream, kinds: frozenset[str] | None) -> Iterator[None]:
        entry = (out, kinds)
        self._followers.append(entry)
        try:
            yield
        finally:
            self._followers.remove(entry)


_rings: weakref.WeakKeyDictionary[Hub, _EventRing] = weakref.WeakKeyDictionary()


# Budgets: how long an op may take inside the hub ----------------------------------------


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


# How ctl prints results -----------------------------------------------------------------


def _show_list(rows: Any, args: Args) -> None:
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("supervisor", "id", "state", "pid", "restarts", "uptime", "last exit"):
        table.add_column(col, justify="right" if col in ("pid", "restarts", "uptime") else "left")
    for r in rows:
        table.add_row(
            r["supervisor"],
            r["id"],
            r["state"],
            str(r["pid"] or "-"),
            str(r["restarts"]),
            f"{r['uptime']:.1f}s" if r["uptime"] is not None else "-",
            r["last_exit"] or "",
        )
    Console(width=200).print(table)


def _show_count(counts: Any, args: Args) -> None:
    for key, value in counts.items():
        click.echo(f"{key}: {value}")


def _show_lines(lines: Any, args: Args) -> None:
    for line in lines:
        click.echo(line)


def _said(word: str) -> Callable[[Any, Args], None]:
    def show(result: Any, args: Args) -> None:
        click.echo(f"{args['id']}: {word}")

    return show


def _show_resize(result: Any, args: Args) -> None:
    click.echo(f"{args['pool']}: {args['size']} members")


def _console() -> Console:
    """Rich output: colour and the terminal's width on a terminal; plain and wide otherwise."""
    console = Console()
    return console if console.is_terminal else Console(width=240, color_system=None)


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


_STATUS_STYLE = {
    "idle": "green",
    "busy": "cyan",
    "starting": "yellow",
    "stopping": "yellow",
    "backing_off": "red",
    "hung": "bold red",
    "stopped": "dim",
}


def _show_status(result: Any, args: Args) -> None:
    hub, agents = result["hub"], result["agents"]
    console = _console()
    work = ", ".join(f"{n} {status}" for status, n in hub["work"].items() if n) or "none"
    console.print(Text(f"hub {hub['id']} (pid {hub['pid']}): {hub['agents']} agents; work: {work}"))
    table = Table(box=box.SIMPLE_HEAD)
    right = ("pid", "uptime", "restarts", "heartbeat")
    for col in ("id", "type", "pid", "status", "uptime", "restarts", "heartbeat", "assignment"):
        table.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    table.add_column("last exit")
    for a in agents:
        table.add_row(
            Text(a["id"]),
            Text(a["type"] or "-"),
            str(a["pid"] or "-"),
            Text(a["status"], style=_STATUS_STYLE.get(a["status"], "")),
            _secs(a["uptime"]),
            str(a["restarts"]),
            _secs(a["heartbeat_age"]),
            Text(a["assignment"] or "-"),
            Text(a["last_exit"] or "", style="red" if a["last_exit"] else ""),
        )
    console.print(table)
    for pool, scale in sorted(result.get("scaling", {}).items()):
        last = scale["last"] or "no change yet"
        console.print(Text(f"autoscale {pool} ({scale['min']}..{scale['max']}): {last}"))
    if "cluster" in result:
        _show_cluster(console, result["cluster"])


def _show_cluster(console: Any, cluster: Mapping[str, Any]) -> None:
    hubs = Table(box=box.SIMPLE_HEAD, title=f"hubs sharing Redis (prefix {cluster['prefix']})")
    for col in ("hub", "state", "host", "pid", "agents", "lease age", "holding"):
        hubs.add_column(col, justify="right" if col in ("pid", "lease age") else "left")
    for h in cluster["hubs"]:
        agents = ", ".join(f"{n} {t}" for t, n in sorted(h["agents"].items())) or "-"
        holding = ", ".join(f"{n} {t}" for t, n in sorted(h["holding"].items())) or "-"
        hubs.add_row(
            Text(h["id"]),
            Text("alive" if h["alive"] else "dead", style="" if h["alive"] else "bold red"),
            Text(h["host"] or "-"),
            str(h["pid"] or "-"),
            Text(agents),
            _secs(h["lease_age"]),
            Text(holding, style="" if h["alive"] or holding == "-" else "red"),
        )
    console.print(hubs)
    queues = Table(box=box.SIMPLE_HEAD, title="durable queues")
    for col in ("type", "waiting", "in flight", "dead"):
        queues.add_column(col, justify="left" if col == "type" else "right")
    for agent_type, q in sorted(cluster["queues"].items()):
        queues.add_row(Text(agent_type), str(q["waiting"]), str(q["in_flight"]), str(q["dead"]))
    console.print(queues)


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else dumps(value)
    return text if len(text) <= width else f"{text[: width - 1]}…"


def _show_items(items: Any, args: Args) -> None:
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("id", "type", "status", "attempt", "deliveries", "agent", "source", "outcome"):
        table.add_column(col, justify="right" if col in ("attempt", "deliveries") else "left")
    for i in items:
        outcome = i["error"] if i["error"] is not None else i["result"]
        table.add_row(
            Text(i["id"]),
            Text(i["type"]),
            Text(i["status"], style=_ITEM_STYLE.get(i["status"], "")),
            str(i["attempt"]),
            f"{i['deliveries']}/{i['max_deliveries']}",
            Text(i["agent"] or "-"),
            Text(i["source"]),
            Text("" if outcome is None else _short(outcome)),
        )
    _console().print(table)


_ITEM_STYLE = {"completed": "green", "assigned": "cyan", "failed": "red", "dead": "bold red"}


def _show_item(item: Any, args: Args) -> None:
    for key in ("id", "type", "status", "attempt", "agent", "source"):
        click.echo(f"{key}: {item[key] if item[key] is not None else '-'}")
    click.echo(f"deliveries: {item['deliveries']} of {item['max_deliveries']}")
    for key in ("payload", "progress", "result", "error"):
        if item[key] is not None or key in ("payload", "result"):
            click.echo(f"{key}: {dumps(item[key])}")
    for h in item["history"]:
        reason = f" ({h['reason']})" if h["reason"] else ""
        where = f" on {h['hub']}" if h.get("hub") else ""
        click.echo(f"  attempt {h['attempt']} by {h['agent']}{where}: {h['outcome']}{reason}")


def _show_submitted(item: Any, args: Args) -> None:
    click.echo(item["id"])
    if item.get("stored") is False:
        click.echo(
            "warning: Redis did not answer in time; the hub holds the item and writes it "
            "when Redis is back (it is lost if the hub dies first)",
            err=True,
        )


def _show_retried(item: Any, args: Args) -> None:
    click.echo(f"{item['id']}: queued again ({item['max_deliveries']} deliveries)")


def _stamp(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _show_line(item: Any, args: Args) -> None:
    click.echo(f"{_stamp(item['at'])}  {item['line']}")


def _show_event(event: Any, args: Args) -> None:
    click.echo(dumps(event))


_CHILD_ID = Field(
    "id",
    str,
    "the child's id, as `hubvisor ctl list` shows it",
    "worker-agent-1",
    metavar="CHILD_ID",
)

_ITEM_ID = Field(
    "id",
    str,
    "the work item's id, as `hubvisor work list` shows it",
    "worker-1",
    metavar="ITEM_ID",
)

OPS: dict[str, Op] = {
    op.name: op
    for op in [
        Op(
            "list",
            "List every child: supervisor, id, state, pid, restarts, uptime, last exit.",
            _list,
            show=_show_list,
        ),
        Op(
            "count",
            "Count children: specs, active, workers, supervisors.",
            _count,
            show=_show_count,
        ),
        Op(
            "logs",
            "Print a child's recent output lines.",
            _logs,
            fields=(
                _CHILD_ID,
                Field(
                    "lines", int, "only the last N lines", 20, required=False, minimum=0, flag="-n"
                ),
            ),
            show=_show_lines,
        ),
        Op(
            "terminate",
            "Stop a child; it stays stopped until restarted.\n\n"
            "Waits until the child has stopped: up to its shutdown time, then it is killed.",
            _terminate,
            fields=(_CHILD_ID,),
            show=_said("terminated"),
            budget=_child_stop_time,
        ),
        Op(
            "restart",
            "Start a stopped child, or stop and start a running one.",
            _restart,
            fields=(_CHILD_ID,),
            show=_said("restarted"),
            budget=_child_stop_time,
            cli="restart",
        ),
        Op(
            "resize",
            "Resize POOL (agent type, pool name or path) to SIZE members.",
            _resize,
            fields=(
                Field("pool", str, "agent type, pool name or path", "worker", metavar="POOL"),
                Field("size", int, "the number of members", 4, minimum=0, metavar="SIZE"),
            ),
            show=_show_resize,
            budget=_pool_stop_time,
            cli="scale",
        ),
        Op(
            "stop",
            "Stop the whole tree gracefully (like SIGTERM to the hub).",
            _stop,
            cli="stop",
        ),
        Op(
            "status",
            "One table of every agent: id, type, pid, status, uptime, restarts, heartbeat "
            "age, assignment, last exit.\n\n"
            "--json prints one object: schema_version, hub, and agents (id, type, "
            "supervisor, pid, status, uptime, restarts, heartbeat_age, assignment, "
            "last_exit); with --cluster also cluster: hubs (id, alive, host, pid, agents, "
            "lease_age, holding) and queues (waiting, in_flight, dead per type).",
            _status,
            fields=(
                Field(
                    "cluster",
                    bool,
                    "also every hub sharing the hub's Redis and the durable queues per type",
                    True,
                    required=False,
                    flag="--cluster",
                ),
            ),
            show=_show_status,
            cli="status",
        ),
        Op(
            "submit",
            "Queue a work item for agents of TYPE and print its id.",
            _submit,
            fields=(
                Field("type", str, "the agent type that does it", "worker", metavar="TYPE"),
                Field(
                    "payload",
                    object,
                    "the work, as JSON ('-': read it from stdin)",
                    {"n": 3},
                    metavar="PAYLOAD",
                ),
                Field(
                    "max_deliveries",
                    int,
                    "deliveries before it is dead-lettered (default: the hub's, 3)",
                    3,
                    required=False,
                    minimum=1,
                    flag="--max-deliveries",
                ),
            ),
            show=_show_submitted,
            cli="submit",
        ),
        Op(
            "work_list",
            "List the work items: id, type, status, attempt, deliveries, agent, outcome.",
            _work_list,
            fields=(
                Field(
                    "status",
                    str,
                    "only items with this status",
                    "dead",
                    required=False,
                    flag="--status",
                    choices=tuple(str(s) for s in ItemStatus),
                ),
            ),
            show=_show_items,
            cli="work list",
        ),
        Op(
            "work_show",
            "Show one work item: payload, result or error, and every attempt.",
            _work_show,
            fields=(_ITEM_ID,),
            show=_show_item,
            cli="work show",
        ),
        Op(
            "work_retry",
            "Queue a dead or failed work item again, its deliveries reset.",
            _work_retry,
            fields=(_ITEM_ID,),
            show=_show_retried,
            cli="work retry",
        ),
        Op(
            "tail",
            "Print an agent's recent output lines with their times; -f keeps following "
            "(its later incarnations too).",
            fields=(
                Field(
                    "id",
                    str,
                    "the agent's id, as `hubvisor status` shows it",
                    "worker-agent-1",
                    metavar="AGENT",
                ),
                Field(
                    "lines", int, "only the last N lines", 20, required=False, minimum=0, flag="-n"
                ),
                Field(
                    "follow",
                    bool,
                    "keep printing new lines until interrupted",
                    True,
                    required=False,
                    flag="-f",
                ),
            ),
            show=_show_line,
            stream=_tail,
            cli="logs",
        ),
        Op(
            "events",
            f"Print the hub's recent events as JSON lines (it keeps the last {EVENTS_KEPT}); "
            "-f keeps following.",
            fields=(
                Field(
                    "kinds",
                    list,
                    "only events of this kind (repeat for more; 'output' and 'heartbeat' "
                    "are shown only when named)",
                    ["work_completed"],
                    required=False,
                    flag="--kind",
                ),
                Field(
                    "lines",
                    int,
                    "only the last N kept events",
                    20,
                    required=False,
                    minimum=0,
                    flag="-n",
                ),
                Field(
                    "follow",
                    bool,
                    "keep printing new events until interrupted",
                    True,
                    required=False,
                    flag="-f",
                ),
            ),
            show=_show_event,
            stream=_events,
            cli="events",
        ),
        Op(
            "budget",
            "Seconds another request may take inside the hub (the client's timeout).",
            _budget,
            fields=(Field("request", dict, "the request to estimate", {"op": "list"}),),
            command=False,
        ),
    ]
}
"""Every control operation, by name: the one place to add one."""


# --------------------------------------------------------------------------------------
# The hub's side


_MAX_DEPTH = 32
"""The deepest nesting of arrays and objects a request (or an answer) may have."""
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[][{}]")


def _too_deep(line: bytes) -> bool:
    """Whether ``line`` nests arrays or objects more than :data:`_MAX_DEPTH` deep.

    Checked before decoding: the JSON decoder recurses per level, and a RecursionError
    near the stack limit also breaks whatever finalizer the garbage collector runs there.
    Brackets inside strings do not count; an unterminated string may count its brackets,
    which only makes a line that is not JSON anyway read as too deep.
    """
    if line.count(b"[") + line.count(b"{") <= _MAX_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b'""', line)):
        if bracket[0] in (b"[", b"{"):
            depth += 1
            if depth > _MAX_DEPTH:
                return True
        else:
            depth = max(0, depth - 1)
    return False


# JSON at the boundary: what comes in is made safe once, here ---------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A JSON escape that may decode to a lone surrogate (a valid pair decodes to one code
point, so any surrogate left in a decoded string is a lone one)."""


class _NotJSON(ValueError):
    """NaN, Infinity or a number that overflows to it: Python's json reads them, JSON
    (and the protocol) does not."""


def _refuse_constant(name: str) -> Any:
    raise _NotJSON(
        f"{name} is not JSON (the protocol forbids NaN and Infinity); send null, a string "
        "or a finite number"
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSON(
            f"{text[:32]} overflows to Infinity, which is not JSON; send a smaller number "
            "or a string"
        )
    return value


def _named_float(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


def safe_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, so it encodes as UTF-8.

    A JSON escape such as ``"\\udcff"`` (what ``json.dumps`` makes of a file name read
    with ``surrogateescape``) decodes to a lone surrogate, which nothing downstream can
    encode: Redis, a log file, a terminal.
    """
    return _SURROGATE.sub("\ufffd", text)


def safe_json(obj: Any) -> Any:
    """``obj`` (decoded JSON) with :func:`safe_text` applied to every string and key."""
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, dict):
        return {safe_text(str(k)): safe_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [safe_json(v) for v in obj]
    return obj


def loads_request(line: bytes | str) -> Any:
    """Decode a request line: UTF-8 strictly, NaN and Infinity refused, lone surrogates
    replaced, so whatever a client sends re-encodes anywhere in the hub.

    Raises:
        ValueError: not UTF-8 or not JSON; :class:`_NotJSON` for NaN and Infinity.
    """
    text = line.decode() if isinstance(line, bytes) else line
    obj = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    return safe_json(obj) if _SURROGATE.search(text) or _SURROGATE_ESCAPE.search(text) else obj


def loads_answer(line: bytes) -> Any:
    """Decode an answer line on the client: text made safe to print (lone surrogates
    replaced), and a NaN or Infinity from an older hub kept as its name, a string, so
    that ``--json`` prints valid JSON.

    Raises:
        ValueError: not UTF-8 or not JSON.
    """
    text = line.decode()
    obj = json.loads(text, parse_constant=str, parse_float=_named_float)
    return safe_json(obj) if _SURROGATE_ESCAPE.search(text) else obj


def dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (invalid JSON): such a float is
    written as its name, a string."""
    try:
        return json.dumps(obj, allow_nan=False, **kw)
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False, **kw)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else "Infinity" if obj > 0 else "-Infinity"
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _parse_line(line: bytes) -> tuple[Op, dict[str, Any]] | dict[str, Any]:
    """The op and arguments of one request line, or the error answer to it."""
    if _too_deep(line):
        return _error(
            f"request is nested more than {_MAX_DEPTH} levels deep; a request is a flat JSON "
            'object like {"op": "list"}'
        )
    try:
        req = loads_request(line)
    except _NotJSON as exc:
        return _error(f"request is not valid JSON: {exc}")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        return _error(
            f'request is not a JSON object on one line ({exc}); send e.g. {{"op": "list"}}'
        )
    try:
        return parse_request(req)
    except ControlError as exc:
        return _error(str(exc))


def _failed(op: Op, exc: Exception) -> dict[str, Any]:
    if isinstance(exc, ControlError):
        return _error(str(exc))
    logger.exception("control request %r failed inside the hub", op.name)
    return _error(f"{op.name} failed inside the hub: {type(exc).__name__}: {exc}")


async def _carry_out(hub: Hub, op: Op, args: Args, background: trio.Nursery) -> dict[str, Any]:
    """The answer to one valid request; never raises (but for cancellation)."""
    try:
        result = await op.run(hub, args, background)
    except Exception as exc:
        return _failed(op, exc)
    return {"ok": True, "result": result}


async def _answer(hub: Hub, line: bytes, background: trio.Nursery) -> dict[str, Any]:
    """The answer to one request line of a non-streaming op; never raises."""
    parsed = _parse_line(line)
    if isinstance(parsed, dict):
        return parsed
    return await _carry_out(hub, *parsed, background)


def _encode(answer: dict[str, Any]) -> bytes:
    try:
        return dumps(answer).encode() + b"\n"
    except (TypeError, ValueError) as exc:  # pragma: no cover - results are plain JSON
        return dumps(_error(f"the result cannot be sent as JSON: {exc}")).encode() + b"\n"


async def _serve_stream(hub: Hub, op: Op, args: Args, sock: trio.SocketStream) -> bool:
    """Run a streaming op on the connection; whether the connection may go on.

    The items go out as ``{"ok": true, "item": ...}`` lines, a gap as ``{"ok": true,
    "dropped": N}``, and the end as ``{"ok": true, "end": true}`` or an error answer. A
    stream that follows (``args["follow"]``) takes the connection over: it ends when the
    client closes the connection (whatever the client sends meanwhile is ignored).
    """
    assert op.stream is not None
    handler = op.stream
    follow = bool(args.get("follow"))
    out = Stream()
    final = {"ok": True, "end": True}
    open_ = True

    async def produce() -> None:
        nonlocal final
        try:
            await handler(hub, args, out)
        except Exception as exc:
            final = _failed(op, exc)
        finally:
            out._send.close()

    async def watch(scope: trio.CancelScope) -> None:
        nonlocal open_
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await sock.receive_some(65536):
                pass
        open_ = False
        scope.cancel()

    async with trio.open_nursery() as nursery:
        if follow:
            nursery.start_soon(watch, nursery.cancel_scope)
        nursery.start_soon(produce)
        try:
            async for gap, item in out._receive:
                if gap:
                    await sock.send_all(_encode({"ok": True, "dropped": gap}))
                await sock.send_all(_encode({"ok": True, "item": item}))
            if out._gap:
                await sock.send_all(_encode({"ok": True, "dropped": out._gap}))
            await sock.send_all(_encode(final))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            open_ = False
        nursery.cancel_scope.cancel()
    return open_ and not follow


async def _send(stream: trio.SocketStream, data: bytes, limits: ControlLimits) -> None:
    """Send an answer; a client that does not take it within the request timeout is
    cut off (it would hold a connection, and the hub's buffers, for ever)."""
    with trio.move_on_after(limits.request_timeout) as scope:
        await stream.send_all(data)
    if scope.cancelled_caught:
        raise trio.ClosedResourceError("the client did not read its answer")


async def _goodbye(stream: trio.SocketStream, answer: dict[str, Any]) -> None:
    """Send a last error line if the client takes it at once, then close."""
    with trio.move_on_after(1.0), contextlib.suppress(trio.BrokenResourceError, OSError):
        await stream.send_all(_encode(answer))
    with trio.CancelScope(shield=True):
        await stream.aclose()


async def _serve_connection(
    hub: Hub,
    stream: trio.SocketStream,
    background: trio.Nursery,
    limits: ControlLimits = ControlLimits(),
) -> None:
    too_long = _error(
        f"request line longer than {_MAX_LINE} bytes; it was skipped up to its newline"
    )
    buf = bytearray()
    skipping = False  # inside an over-long line: drop bytes up to the next newline
    idle_since = trio.current_time()  # the last answer (or the opening)
    line_since: float | None = None  # the first byte of a request not read whole yet
    async with stream:
        try:
            while True:
                if line_since is None:
                    deadline, why = idle_since + limits.idle_timeout, "idle"
                else:
                    deadline, why = line_since + limits.request_timeout, "slow"
                with trio.move_on_at(deadline) as waiting:
                    chunk = await stream.receive_some(65536)
                if waiting.cancelled_caught:
                    await _goodbye(stream, _error(_timed_out(why, limits)))
                    return
                if not chunk:
                    return
                buf += chunk
                answered = False
                while (end := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:end])
                    del buf[: end + 1]
                    answered = True
                    if skipping:
                        skipping = False
                    elif len(line) > _MAX_LINE:
                        await _send(stream, _encode(too_long), limits)
                    elif line.strip():
                        parsed = _parse_line(line)
                        if isinstance(parsed, dict):
                            await _send(stream, _encode(parsed), limits)
                        elif parsed[0].stream is not None:
                            if not await _serve_stream(hub, *parsed, stream):
                                return
                        else:
                            answer = await _carry_out(hub, *parsed, background)
                            await _send(stream, _encode(answer), limits)
                if len(buf) > _MAX_LINE and not skipping:
                    skipping = True
                    await _send(stream, _encode(too_long), limits)
                if skipping:
                    buf.clear()
                now = trio.current_time()
                if answered:
                    idle_since, line_since = now, None
                if (buf or skipping) and line_since is None:
                    line_since = now
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


def _timed_out(why: str, limits: ControlLimits) -> str:
    if why == "idle":
        return (
            f"connection closed: no request for {limits.idle_timeout:g}s (the hub's idle "
            "timeout for control connections); connect again to send more"
        )
    return (
        f"connection closed: a request line took over {limits.request_timeout:g}s to "
        "arrive; send each request as one line ending in a newline"
    )


@attrs.define
class _Gate:
    """Counts the control connections served; refuses those over the cap."""

    limits: ControlLimits
    open: int = 0
    refused: int = 0

    async def serve(
        self, stream: trio.SocketStream, serve: Callable[[trio.SocketStream], Awaitable[None]]
    ) -> None:
        if self.open >= self.limits.max_connections:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                logger.warning(
                    "control socket: %d connections open, the most it serves "
                    "(ControlLimits.max_connections); refusing new ones (%d so far)",
                    self.open,
                    self.refused,
                )
            busy = _error(
                f"the hub is serving {self.limits.max_connections} control connections, "
                f"the most it takes at once; try again (idle ones close after "
                f"{self.limits.idle_timeout:g}s)"
            )
            await _goodbye(stream, {**busy, "busy": True})
            return
        self.open += 1
        try:
            await serve(stream)
        finally:
            self.open -= 1


def _claim(path: Path) -> None:
    """Make the socket's directory, refuse a live hub's socket, remove a dead one's."""
    if path.parent == _default_base():
        _check_private_dir(path.parent, ControlError, "--control-socket")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlError(
            f"cannot create the control socket's directory {path.parent}: {exc.strerror}; "
            "pass --control-socket PATH in a directory you can write"
        ) from None
    if path.parent == _default_base():
        _check_private_dir(path.parent, ControlError, "--control-socket")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(
            f"{path} exists and is not a socket; hubvisor will not replace it: remove it if "
            "it is a leftover, or pass --control-socket PATH"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)  # left by a hub that died: take it over
            return
        raise ControlError(
            f"cannot use the control socket {path}: {exc.strerror}; remove it, or pass "
            "--control-socket PATH"
        ) from None
    finally:
        probe.close()
    raise _taken(path)


def _taken(path: Path) -> ControlError:
    return ControlError(
        f"another hub is already listening at {path}; stop that hub (hubvisor ctl --socket "
        f"{path} stop), or run this one with another hub id (the root spec's name) or "
        "--control-socket PATH"
    )


async def serve_control(
    hub: Hub,
    path: Path,
    *,
    limits: ControlLimits = ControlLimits(),
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve control requests for ``hub`` on the Unix socket ``path`` until cancelled.

    ``limits`` bounds the connections (how many at once, how long idle or slow); see
    :class:`ControlLimits`.

    Raises:
        ControlError: another hub listens at ``path``, or its directory is unsafe or
            cannot be made (before anything is served).
    """
    _claim(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            await sock.bind(str(path))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _taken(path) from None
            raise ControlError(
                f"cannot listen on {path}: {exc.strerror or exc}; pass --control-socket PATH "
                "(a short path in a directory you can write)"
            ) from None
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(sock)
    ring = _EventRing(hub)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(ring.run)
            _rings.setdefault(hub, ring)
            task_status.started(path)

            gate = _Gate(limits)

            async def serve(stream: trio.SocketStream) -> None:
                await _serve_connection(hub, stream, nursery, limits)

            async def handler(stream: trio.SocketStream) -> None:
                await gate.serve(stream, serve)

            await trio.serve_listeners(handler, [listener], handler_nursery=nursery)
    finally:
        if _rings.get(hub) is ring:
            del _rings[hub]
        with contextlib.suppress(OSError):
            path.unlink()
        with trio.CancelScope(shield=True):
            await listener.aclose()


# --------------------------------------------------------------------------------------
# The client's side


def no_hub_message(path: Path) -> str:
    """What every command says when no hub listens at ``path`` (it exits 3)."""
    return f"no hub is running at {path}; start one with `hubvisor run SPEC`"


class _Client:
    """One blocking connection to a hub: requests in, answers out, every failure explained."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.buf = b""

    def connect(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(self.path))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                raise NoHubRunning(no_hub_message(self.path)) from None
            raise ControlClientError(
                f"no hub is listening on {self.path} ({exc.strerror or exc}); is `hubvisor "
                "run` running with that hub id, or pass --socket"
            ) from None

    def send(self, req: dict[str, Any]) -> None:
        try:
            line = json.dumps(req, allow_nan=False).encode() + b"\n"
        except ValueError:
            raise ControlClientError(
                f"the {_show_value(req.get('op'))} request holds NaN or Infinity, which JSON "
                "does not allow (the protocol forbids them); send null, a string or a finite "
                "number"
            ) from None
        if len(line) > _MAX_LINE:
            raise ControlClientError(
                f"the request is {len(line)} bytes, over the {_MAX_LINE} a control request may "
                "have; put large inputs in a file or store and pass their name"
            )
        try:
            self.sock.sendall(line)
        except OSError as exc:
            # A busy hub answers and closes before reading: its answer may be waiting.
            try:
                self.read("", 1.0)
            except HubBusy:
                raise
            except (ControlClientError, OSError):
                pass
            raise ControlClientError(
                f"lost the connection to the hub at {self.path} ({exc.strerror or exc})"
            ) from None

    def read(self, op: str, timeout: float | None, ended: str | None = None) -> dict[str, Any]:
        """The next answer line; an ``ok: false`` one raises; ``ended``: the error if the
        hub closes the connection (default: it closed it before answering)."""
        self.sock.settimeout(timeout)
        try:
            while b"\n" not in self.buf:
                if len(self.buf) > _MAX_ANSWER:
                    raise ControlClientError(
                        f"the hub at {self.path} sent an answer longer than {_MAX_ANSWER} bytes"
                    )
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise ControlClientError(
                        ended
                        or f"the hub at {self.path} closed the connection before answering {op}"
                    )
                self.buf += chunk
        except TimeoutError:
            raise ControlClientError(
                f"the hub at {self.path} did not answer {op} within {timeout:g}s; it may still "
                "be carrying it out (see `hubvisor ctl list`); wait longer with --timeout "
                "SECONDS"
            ) from None
        except OSError as exc:
            raise ControlClientError(
                f"lost the connection to the hub at {self.path} ({exc.strerror or exc})"
            ) from None
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            answer = None if _too_deep(line) else loads_answer(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            raise ControlClientError(
                f"the hub at {self.path} sent an answer that is not a hubvisor answer: "
                f"{line[:80]!r}; is {self.path} the control socket of a hubvisor hub?"
            )
        if not answer["ok"]:
            error = HubBusy if answer.get("busy") is True else ControlClientError
            raise error(str(answer.get("error")))
        return answer

    def ask(self, req: dict[str, Any], timeout: float) -> Any:
        op = _show_value(req.get("op") if isinstance(req, dict) else req)
        self.send(req)
        return self.read(op, timeout).get("result")

    def close(self) -> None:
        self.sock.close()


def _budget_of(client: _Client, req: dict[str, Any]) -> float:
    wait = client.ask({"op": "budget", "request": req}, FAST_TIMEOUT)
    if not isinstance(wait, int | float) or isinstance(wait, bool) or not math.isfinite(wait):
        raise ControlClientError(
            f"the hub at {client.path} gave {_show_value(wait)} as the time "
            f"{_show_value(req.get('op'))} may take; pass --timeout SECONDS"
        )
    return max(0.0, float(wait))


def _connect(path: Path, timeout: float) -> _Client:
    if path.parent == _default_base():
        _check_private_dir(path.parent, ControlClientError, "--socket")
    client = _Client(path)
    try:
        client.connect(timeout)
    except BaseException:
        client.close()
        raise
    return client


def request(path: Path, req: dict[str, Any], timeout: float | None = None) -> Any:
    """Send one request to the hub at ``path`` and return its result (blocking client).

    ``timeout``: seconds to wait for the answer. ``None``: :data:`FAST_TIMEOUT`, plus,
    for an op that may take a while inside the hub (``terminate`` waits up to the
    child's shutdown time), the time the hub says it may take. A streaming op's result
    is the list of its items (it must not follow: see :func:`stream`).

    Raises:
        NoHubRunning: nothing listens at ``path``.
        ControlClientError: the socket's directory is unsafe, the hub refused the
            request, did not answer in time, or answered garbage.
    """
    name = req.get("op") if isinstance(req, dict) else None
    op = OPS.get(name) if isinstance(name, str) else None
    if op is not None and op.stream is not None:
        if req.get("follow"):
            raise ControlClientError(f"{name} with follow never ends; read it with stream()")
        found = stream(path, req, timeout)
        return [answer["item"] for answer in found if "item" in answer]
    return _retry_busy(lambda: _request_once(path, req, op, timeout), timeout)


def _request_once(path: Path, req: dict[str, Any], op: Op | None, timeout: float | None) -> Any:
    client = _connect(path, FAST_TIMEOUT if timeout is None else timeout)
    try:
        if timeout is None:
            timeout = FAST_TIMEOUT
            if op is not None and op.budget is not None:
                timeout += _budget_of(client, req)
        return client.ask(req, timeout)
    finally:
        client.close()


def _retry_busy(attempt: Callable[[], Any], timeout: float | None) -> Any:
    """``attempt()``, tried again while the hub is busy (at its connection cap, see
    :class:`ControlLimits`) until ``timeout`` (default :data:`FAST_TIMEOUT`) runs out.

    A busy hub closed the connection before reading the request: nothing was done,
    so trying again is safe.
    """
    deadline = time.monotonic() + (FAST_TIMEOUT if timeout is None else timeout)
    pause = 0.05
    while True:
        try:
            return attempt()
        except HubBusy:
            if time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(1.0, pause * 2)


def stream(path: Path, req: dict[str, Any], timeout: float | None = None) -> Iterator[Any]:
    """Send a streaming request; yield its answers until the stream ends (blocking client).

    Each answer is ``{"item": ...}`` or ``{"dropped": N}`` (N items the hub dropped
    there because this client read too slowly). A request with ``follow`` goes on until
    the caller stops iterating (closing the connection ends the stream in the hub).
    ``timeout``: seconds to wait for each answer (default: :data:`FAST_TIMEOUT`, and for
    ever while following).

    Raises:
        NoHubRunning: nothing listens at ``path``.
        ControlClientError: the hub refused the request, ended a following stream (it
            stopped), did not answer in time, or answered garbage.
    """
    name = _show_value(req.get("op"))
    follow = bool(req.get("follow"))
    wait = timeout if timeout is not None else None if follow else FAST_TIMEOUT
    ended = f"the hub at {path} ended the stream: it stopped" if follow else None

    def first() -> tuple[_Client, dict[str, Any]]:
        client = _connect(path, FAST_TIMEOUT if timeout is None else timeout)
        try:
            client.send(req)
            return client, client.read(name, wait, ended)
        except BaseException:
            client.close()
            raise

    client, answer = _retry_busy(first, timeout)
    try:
        while True:
            if answer.get("end"):
                return
            if "item" in answer or "dropped" in answer:
                yield {k: answer[k] for k in ("item", "dropped") if k in answer}
            elif "result" in answer:
                raise ControlClientError(
                    f"{name} is not a streaming op of the hub at {path}; is it the same "
                    "hubvisor version?"
                )
            answer = client.read(name, wait, ended)
    finally:
        client.close()
