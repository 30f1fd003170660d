"""The table of control operations: what each op takes, declared once.

Each :class:`Op` names its fields (type, bounds, help), whether it streams, whether it
may take a while inside the hub, and the top-level command that runs it too. The socket's
dispatch, the ``ctl`` subcommands and the top-level commands (``hubvisor status``,
``work list``...) are all built from it. What an op does in the hub is
:data:`supervisor.control.handlers.HANDLERS` (or ``STREAMS``), keyed by the op's name;
how ``hubvisor`` prints its result is :data:`supervisor.control.printers.PRINTERS`.
Adding an op is one entry here and one in each of those.

This module imports no hub, no trio and no rich: the client commands load it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import ControlError

__all__ = [
    "EVENTS_KEPT",
    "FAST_TIMEOUT",
    "ITEM_STATUSES",
    "OPS",
    "SCHEMA_VERSION",
    "WAIT_TIMED_OUT",
    "Args",
    "ControlLimits",
    "Field",
    "Op",
    "parse_request",
    "show_value",
    "wait_exit_status",
]

FAST_TIMEOUT = 30.0
"""Seconds the client waits for an answer, plus what a slow op may take in the hub."""
SCHEMA_VERSION = 1
"""The version of ``hubvisor status --json``; it grows when a field changes meaning."""
EVENTS_KEPT = 1000
"""How many recent events the control server keeps for ``hubvisor events``."""
ITEM_STATUSES = ("queued", "assigned", "completed", "failed", "dead", "cancelled")
"""The statuses of a work item (:class:`supervisor.ItemStatus`; a test keeps them in step)."""
WAIT_TIMED_OUT = 124
"""The exit status of ``hubvisor work wait`` and ``submit --wait`` when their ``--timeout``
ran out before every item ended (as ``timeout(1)``'s)."""

Args = Mapping[str, Any]


@dataclass(frozen=True)
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
    skipped); a stream holds at most 1000 new items for a slow reader
    (:class:`~supervisor.control.handlers.Stream`).
    """

    max_connections: int = 64
    idle_timeout: float = 10.0
    request_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_connections, int) or self.max_connections < 1:
            raise ValueError(f"max_connections must be an int >= 1 (got {self.max_connections!r})")
        for name in ("idle_timeout", "request_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0 (got {value!r})")


_KIND_NAMES: dict[type, str] = {
    int: "int",
    float: "number",
    str: "string",
    dict: "object",
    bool: "boolean",
    list: "list of strings",
    object: "JSON value",
}


def show_value(value: object) -> str:
    """A short description of a request value for an error message (never huge)."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON array"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


@dataclass(frozen=True)
class Field:
    """One field of a control request.

    Attributes:
        name: the JSON key, and the ``hubvisor ctl`` argument or option name.
        kind: ``int``, ``float`` (any finite number: seconds), ``str``, ``bool``, ``dict``
            (a JSON object), ``list`` (of strings) or ``object`` (any JSON value);
            ``bool`` is never a number.
        help: what the field means (``ctl --help`` shows it).
        example: a valid value, shown in error messages as the fix.
        required: whether a request must carry it (``null`` counts as absent).
        minimum: the smallest value of an ``int`` or ``float`` field.
        flag: the command's option for it (e.g. ``"-n"``, or ``"--kind"`` used alone);
            without one it is an argument. A ``bool`` field is an on/off flag, a ``list``
            field an option that may be repeated (as an argument: one or more values).
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
        if self.kind is float:
            return (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and (self.minimum is None or value >= self.minimum)
            )
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
                f"{show_value(value)}); send {self.name!r} as a {self.kind.__name__}, e.g. "
                f"{op.example()}"
            )
        return value


@dataclass(frozen=True)
class Op:
    """One control operation: its fields and how it is served.

    Attributes:
        name: the request's ``"op"``, the ``hubvisor ctl`` subcommand, and the key of
            its handler (``HANDLERS`` or ``STREAMS``) and printer (``PRINTERS``).
        help: the subcommand's help text (first line: its summary).
        fields: the request's fields; any other key is refused.
        budget: whether the op may take a while inside the hub (e.g. a child's shutdown
            time): the client asks the hub how long (``BUDGETS``) and waits that long on
            top of its own timeout. ``False``: the op answers at once.
        command: whether ``hubvisor ctl`` offers it.
        stream: a streaming op: its handler (in ``STREAMS``) puts items into a
            :class:`~supervisor.control.handlers.Stream` until the stream is over; when
            ``args["follow"]`` is true it runs until the client closes the connection.
        waits: a streaming op that may wait long for its items (``work_wait``): like a
            follower it takes the connection over (the hub ends it when the client
            closes the connection, and closes the connection after its end line), no
            idle timeout cuts it, and the client waits for each line as long as it takes.
        cli: the top-level command that runs it too, e.g. ``"work list"``
            (``hubvisor work list``); ``None``: only ``hubvisor ctl NAME``.
    """

    name: str
    help: str
    fields: tuple[Field, ...] = ()
    budget: bool = False
    command: bool = True
    stream: bool = False
    cli: str | None = None
    waits: bool = False

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
                f"request {self.name!r} has no field {show_value(unknown[0])}; it takes "
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


def wait_exit_status(items: Iterable[Mapping[str, Any]]) -> int:
    """The exit status of a wait that printed ``items`` (``work_wait``'s, as JSON): 1 when
    one ended without completing, else :data:`WAIT_TIMED_OUT` when one had not ended
    (``final`` false: the timeout ran out), else 0."""
    items = list(items)
    if any(i.get("final") and i.get("status") != "completed" for i in items):
        return 1
    return WAIT_TIMED_OUT if any(not i.get("final") for i in items) else 0


def parse_request(req: object) -> tuple[Op, dict[str, Any]]:
    """The op and validated arguments of a decoded request, or a :class:`ControlError`."""
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise ControlError(
            f'a request is a JSON object like {{"op": "list"}} (got {show_value(req)}); '
            f"the ops are {', '.join(OPS)}"
        )
    op = OPS.get(req["op"])
    if op is None:
        raise ControlError(f"unknown op {show_value(req['op'])}; the ops are {', '.join(OPS)}")
    return op, op.parse(req)


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
        ),
        Op(
            "count",
            "Count children: specs, active, workers, supervisors.",
        ),
        Op(
            "logs",
            "Print a child's recent output lines.",
            fields=(
                _CHILD_ID,
                Field(
                    "lines", int, "only the last N lines", 20, required=False, minimum=0, flag="-n"
                ),
            ),
        ),
        Op(
            "terminate",
            "Stop a child; it stays stopped until restarted.\n\n"
            "Waits until the child has stopped: up to its shutdown time, then it is killed.",
            fields=(_CHILD_ID,),
            budget=True,
        ),
        Op(
            "restart",
            "Start a stopped child, or stop and start a running one.",
            fields=(_CHILD_ID,),
            budget=True,
            cli="restart",
        ),
        Op(
            "resize",
            "Resize POOL (agent type, pool name or path) to SIZE members.",
            fields=(
                Field("pool", str, "agent type, pool name or path", "worker", metavar="POOL"),
                Field("size", int, "the number of members", 4, minimum=0, metavar="SIZE"),
            ),
            budget=True,
            cli="scale",
        ),
        Op(
            "stop",
            "Stop the whole tree gracefully (like SIGTERM to the hub).",
            cli="stop",
        ),
        Op(
            "status",
            "One table of every agent: id, type, pid, status, uptime, restarts, heartbeat "
            "age, assignment, last exit.\n\n"
            "--json prints one object: schema_version, hub, and agents (id, type, "
            "supervisor, pid, status, uptime, restarts, heartbeat_age, assignment, "
            "last_exit); with --cluster also cluster: hubs (id, alive, host, pid, agents, "
            "lease_age, holding) and queues (waiting, in_flight, dead per type; require and "
            "unserved when not empty).",
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
            cli="status",
        ),
        Op(
            "submit",
            "Queue a work item for agents of TYPE and print its id.",
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
                # -- dependencies, idempotent keys, routing to tiers (issue 21) --
                Field(
                    "key",
                    str,
                    "an idempotency key: while an item of TYPE submitted with it is kept, "
                    "its id is answered and nothing is created",
                    "build-1234",
                    required=False,
                    flag="--key",
                ),
                Field(
                    "after",
                    list,
                    "ids of items to wait for (ID[,ID...], repeatable): handed out once all "
                    "completed, cancelled if one ends otherwise",
                    ["worker-1"],
                    required=False,
                    flag="--after",
                ),
                Field(
                    "require",
                    list,
                    "LABEL=VALUE a pool must have to be given the item (repeatable; "
                    "PoolSpec(labels=...))",
                    ["tier=large"],
                    required=False,
                    flag="--require",
                ),
                # -- end of dependencies, keys, tiers --
                # --- ordering (issue 21) ---
                Field(
                    "priority",
                    int,
                    "higher first among the ready items of TYPE, FIFO within one (default 0)",
                    10,
                    required=False,
                    flag="--priority",
                ),
                Field(
                    "delay",
                    float,
                    "seconds before the item may be handed out",
                    30,
                    required=False,
                    minimum=0,
                    flag="--delay",
                ),
                Field(
                    "not_before",
                    str,
                    "an ISO 8601 time before which it is not handed out (no zone: the "
                    "hub's local time)",
                    "2026-12-07T09:30:00+00:00",
                    required=False,
                    flag="--not-before",
                ),
                # --- end ordering ---
                # -- cancel and time limits (issue 21) --
                Field(
                    "time_limit",
                    float,
                    "seconds each attempt may run; then the agent is told to give it up "
                    "(the attempt ends timed_out, a delivery spent) (default: the pool's)",
                    600,
                    required=False,
                    minimum=0,
                    flag="--time-limit",
                ),
            ),
            cli="submit",
        ),
        Op(
            "work_list",
            "List the work items: id, type, status, attempt, deliveries, agent, outcome.",
            fields=(
                Field(
                    "status",
                    str,
                    "only items with this status",
                    "dead",
                    required=False,
                    flag="--status",
                    choices=ITEM_STATUSES,
                ),
            ),
            cli="work list",
        ),
        Op(
            "work_show",
            "Show one work item: payload, result or error, and every attempt.",
            fields=(_ITEM_ID,),
            cli="work show",
        ),
        Op(
            "work_retry",
            "Queue a dead or failed work item again, its deliveries reset.",
            fields=(_ITEM_ID,),
            cli="work retry",
        ),
        # -- cancel and time limits (issue 21) --
        Op(
            "work_cancel",
            "Cancel a queued or assigned work item: it ends cancelled; the agent holding it "
            "is told to give it up (CANCEL; protocol v1 agents are stopped) and any later "
            "answer for it is refused.",
            fields=(
                _ITEM_ID,
                Field(
                    "reason",
                    str,
                    "why, kept in the item's error",
                    "not needed",
                    required=False,
                    flag="--reason",
                ),
            ),
            cli="work cancel",
        ),
        Op(
            "work_wait",
            "Wait until each work item ITEM_ID... has ended; print each as it ends.\n\n"
            "Exit status: 0 when every item completed; 1 when one failed or is dead (its "
            f"error is printed); {WAIT_TIMED_OUT} when --timeout ran out first (the items "
            "not ended yet are printed with their status; they go on). --json prints each "
            "item as a JSON line (as `work show --json`; 'final' is false for one the wait "
            "gave up on).",
            fields=(
                Field(
                    "ids",
                    list,
                    "the work items' ids, as `hubvisor submit` printed them",
                    ["worker-1"],
                    metavar="ITEM_ID...",
                ),
                Field(
                    "timeout",
                    float,
                    "seconds to wait at most (default: as long as it takes)",
                    60,
                    required=False,
                    minimum=0,
                    flag="--timeout",
                ),
            ),
            stream=True,
            waits=True,
            cli="work wait",
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
            stream=True,
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
            stream=True,
            cli="events",
        ),
        Op(
            "budget",
            "Seconds another request may take inside the hub (the client's timeout).",
            fields=(Field("request", dict, "the request to estimate", {"op": "list"}),),
            command=False,
        ),
    ]
}
"""Every control operation, by name (its handler and printer are keyed by the name too)."""
