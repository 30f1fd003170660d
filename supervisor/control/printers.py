"""How ``hubvisor`` prints each op's result (or each item of a stream), keyed by the
op's name; ``--json`` prints the raw result instead.

Client side only: rich and click, never the hub.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import click
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .ops import Args
from .wire import dumps

__all__ = ["PRINTERS", "Printer", "secs", "show_result", "warn_not_stored"]

Printer = Callable[[Any, Args], None]
"""``show(result, args)`` prints an op's result; ``args`` are the request's fields."""


def _echo(result: Any, args: Args) -> None:
    click.echo(result)


def _show_list(rows: Any, args: Args) -> None:
    cells = [
        (
            Text(r["supervisor"]),
            Text(r["id"]),
            Text(r["state"]),
            str(r["pid"] or "-"),
            str(r["restarts"]),
            f"{r['uptime']:.1f}s" if r["uptime"] is not None else "-",
            Text(r["last_exit"] or ""),
        )
        for r in rows
    ]
    _print_fitted(_console(), LIST_COLUMNS, cells)


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


def secs(value: float | None) -> str:
    """Seconds, minutes or hours, short (``-`` for none)."""
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
    delayed = sum(q.get("delayed", 0) for q in hub.get("queues", {}).values())
    if delayed:  # issue 21: queued, waiting for their time
        work += f" ({delayed} of the queued delayed)"
    console.print(
        Text(f"hub: {hub['id']} (pid {hub['pid']}): {hub['agents']} agents; work: {work}")
    )
    if hub.get("store"):
        console.print(Text(f"work {hub['store']}"))
    rows = [
        (
            Text(a["id"]),
            Text(a["type"] or "-"),
            str(a["pid"] or "-"),
            Text(a["status"], style=_STATUS_STYLE.get(a["status"], "")),
            secs(a["uptime"]),
            str(a["restarts"]),
            secs(a["heartbeat_age"]),
            Text(a["assignment"] or "-"),
            Text(a["last_exit"] or "", style="red" if a["last_exit"] else ""),
        )
        for a in agents
    ]
    _print_fitted(console, STATUS_COLUMNS, rows)
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
            secs(h["lease_age"]),
            Text(holding, style="" if h["alive"] or holding == "-" else "red"),
        )
    console.print(hubs)
    queues = Table(box=box.SIMPLE_HEAD, title="durable queues")
    for col in ("type", "waiting", "in flight", "dead", "no hub serves"):
        queues.add_column(col, justify="left" if col == "type" else "right")
    for agent_type, q in sorted(cluster["queues"].items()):
        unserved = int(q.get("unserved") or 0)  # issue 21: no live hub's pool matches
        queues.add_row(
            Text(agent_type),
            str(q["waiting"]),
            str(q["in_flight"]),
            str(q["dead"]),
            Text(str(unserved), style="bold red" if unserved else ""),
        )
    console.print(queues)
    for agent_type, q in sorted(cluster["queues"].items()):  # waiting per requirement
        for need, n in sorted((q.get("require") or {}).items()):
            console.print(Text(f"{agent_type} --require {need}: {n} waiting"))
    if "sentinel" in cluster.get("redis", {}):
        where = cluster["redis"]["sentinel"]
        console.print(Text(f"Redis master behind Sentinel ({where['service']}): {where['master']}"))
    elif "redis" in cluster:
        _show_redis_cluster(console, cluster["redis"])


def _show_redis_cluster(console: Any, topology: Mapping[str, Any]) -> None:
    """The Redis Cluster's nodes and where each type lives (``status --cluster``)."""
    nodes = Table(box=box.SIMPLE_HEAD, title="Redis Cluster nodes (as this hub sees them)")
    for col in ("node", "role", "master", "slots", "state"):
        nodes.add_column(col)
    for n in topology["nodes"]:
        ok = n["state"] == "ok"
        nodes.add_row(
            Text(n["address"]),
            Text(n["role"]),
            Text(n["master"] or "-"),
            Text(n["slots"] or "-"),
            Text(n["state"], style="" if ok else "bold red"),
        )
    console.print(nodes)
    types = Table(box=box.SIMPLE_HEAD, title="types on the Cluster")
    for col in ("type", "slot", "master"):
        types.add_column(col, justify="right" if col == "slot" else "left")
    for agent_type, where in sorted(topology["types"].items()):
        types.add_row(Text(agent_type), str(where["slot"]), Text(where["master"] or "-"))
    console.print(types)


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else dumps(value)
    return text if len(text) <= width else f"{text[: width - 1]}…"


def _show_items(items: Any, args: Args) -> None:
    rows: list[tuple[Cell, ...]] = []
    for i in items:
        outcome = i["error"] if i["error"] is not None else i["result"]
        rows.append(
            (
                Text(i["id"]),
                Text(i["type"]),
                Text(i["status"] + _waits(i), style=_ITEM_STYLE.get(i["status"], "")),
                str(i["attempt"]),
                f"{i['deliveries']}/{i['max_deliveries']}",
                Text(i["agent"] or "-"),
                Text(i["source"]),
                Text("" if outcome is None else _short(outcome)),
            )
        )
    _print_fitted(_console(), ITEM_COLUMNS, rows)


_ITEM_STYLE = {
    "completed": "green",
    "assigned": "cyan",
    "failed": "red",
    "dead": "bold red",
    "cancelled": "yellow",
}


def _show_item(item: Any, args: Args) -> None:
    for key in ("id", "type", "status", "attempt", "agent", "source"):
        click.echo(f"{key}: {item[key] if item[key] is not None else '-'}")
    click.echo(f"deliveries: {item['deliveries']} of {item['max_deliveries']}")
    _show_ordering(item)
    if item.get("time_limit") is not None:
        click.echo(f"time_limit: {item['time_limit']:g}s per attempt")
    for key in ("payload", "progress", "result", "error"):
        if item[key] is not None or key in ("payload", "result"):
            click.echo(f"{key}: {dumps(item[key])}")
    _show_controls(item)
    for h in item["history"]:
        reason = f" ({h['reason']})" if h["reason"] else ""
        where = f" on {h['hub']}" if h.get("hub") else ""
        click.echo(f"  attempt {h['attempt']} by {h['agent']}{where}: {h['outcome']}{reason}")


def _show_controls(item: Any) -> None:
    """The item's key, dependencies and required labels (issue 21), those it has."""
    if item.get("key") is not None:
        click.echo(f"key: {item['key']}")
    if item.get("after"):
        waiting = item.get("waiting_on") or []
        note = f" (waiting on {', '.join(waiting)})" if waiting else ""
        click.echo(f"after: {', '.join(item['after'])}{note}")
    if item.get("require"):
        click.echo(f"require: {' '.join(f'{k}={v}' for k, v in item['require'].items())}")


# --- ordering (issue 21) ---


def _waits(item: Any) -> str:
    """`` until 09:30:05`` for a queued item that waits for its time; `` p5`` for a
    priority other than 0."""
    text = ""
    if item.get("priority"):
        text += f" p{item['priority']}"
    if item.get("not_before") is not None and item["status"] == "queued":
        text += f" until {time.strftime('%H:%M:%S', time.localtime(item['not_before']))}"
    return text


def _show_ordering(item: Any) -> None:
    if item.get("priority"):
        click.echo(f"priority: {item['priority']}")
    at = item.get("not_before")
    if at is not None and item["status"] == "queued":
        when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(at))
        click.echo(f"waits until: {when} (in {max(0.0, at - time.time()):.1f} s)")


# --- end ordering ---


def _show_submitted(item: Any, args: Args) -> None:
    click.echo(item["id"])
    if item.get("stored") is False:
        warn_not_stored()


def warn_not_stored() -> None:
    """``submit --wait``: say on stderr that a submitted item is not durable yet."""
    click.echo(
        "warning: the work store (Redis, or the disk of the SQLite store) did not take "
        "the item in time; the hub holds it and writes it when the store answers (it is "
        "lost if the hub dies first)",
        err=True,
    )


def show_result(item: Any, args: Args) -> None:
    """``submit --wait``: the result of a completed item on stdout; how another ended,
    or that the wait gave up, on stderr."""
    if not item.get("final"):
        click.echo(
            f"hubvisor: work item {item['id']} is still {item['status']} after "
            f"{args.get('timeout', 0):g}s; it goes on (`hubvisor work wait {item['id']}`)",
            err=True,
        )
    elif item["status"] == "completed":
        click.echo(dumps(item["result"]))
    else:
        click.echo(
            f"hubvisor: work item {item['id']} {item['status']}: {item['error'] or '-'}",
            err=True,
        )


def _show_waited(item: Any, args: Args) -> None:
    """One line per item as it ends: its result, or how it ended and why (on stderr), or
    that the wait gave up on it."""
    if not item.get("final"):
        click.echo(
            f"{item['id']}: still {item['status']} when the wait ended after "
            f"{args.get('timeout', 0):g}s; it goes on (`hubvisor work wait {item['id']}`)",
            err=True,
        )
    elif item["status"] == "completed":
        click.echo(f"{item['id']}: completed: {dumps(item['result'])}")
    else:
        click.echo(f"{item['id']}: {item['status']}: {item['error'] or '-'}", err=True)


def _show_retried(item: Any, args: Args) -> None:
    click.echo(f"{item['id']}: queued again ({item['max_deliveries']} deliveries)")


def _show_cancelled(item: Any, args: Args) -> None:
    click.echo(f"{item['id']}: cancelled")


def _stamp(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _show_line(item: Any, args: Args) -> None:
    click.echo(f"{_stamp(item['at'])}  {item['line']}")


def _show_event(event: Any, args: Args) -> None:
    click.echo(dumps(event))


# --- fitting a table to the terminal (issue 22) ---


class Column(NamedTuple):
    """A column of a table that fits the terminal: when the terminal is too narrow the
    columns of the highest ``drop`` go first (0: never dropped), as pm2 does; a ``wrap``
    column wraps its text instead of being cut."""

    name: str
    drop: int = 0
    right: bool = False
    wrap: bool = False


Cell = str | Text
_WRAP_MIN: Final = 20
"""A wrapping column is never narrowed below this many cells to fit."""
_PIPED_WIDTH: Final = 10_000
"""Piped output: no width to fit (lines are as long as their text, without padding)."""
_Plain: Final = Console  # measures and renders off screen (tests replace ``Console``)


def _table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for col in columns:
        table.add_column(
            col.name,
            justify="right" if col.right else "left",
            no_wrap=not col.wrap,
            overflow="fold" if col.wrap else "ellipsis",
        )
    for row in rows:
        table.add_row(*row)
    return table


def _cells(cell: Cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def fit_table(
    columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int | None
) -> tuple[Table, list[str]]:
    """A table of ``rows`` no wider than ``width`` (``None``: any width), and the names
    of the columns dropped to fit it."""
    shown = list(range(len(columns)))
    measure = _Plain(width=_PIPED_WIDTH, color_system=None)
    while True:
        table = _table([columns[i] for i in shown], [[r[i] for i in shown] for r in rows])
        if width is None:
            break
        slack = sum(
            max(0, max([cell_len(columns[i].name), *(_cells(r[i]) for r in rows)]) - _WRAP_MIN)
            for i in shown
            if columns[i].wrap
        )
        droppable = [i for i in shown if columns[i].drop > 0]
        if measure.measure(table).maximum - slack <= width or not droppable:
            break
        shown.remove(max(droppable, key=lambda i: (columns[i].drop, i)))
    return table, [c.name for i, c in enumerate(columns) if i not in shown]


def _print_fitted(
    console: Console, columns: Sequence[Column], rows: Sequence[Sequence[Cell]]
) -> None:
    """On a terminal: the table fitted to its width, and which columns did not fit.
    Piped: every column, each line without trailing spaces."""
    if console.is_terminal:
        table, hidden = fit_table(columns, rows, console.width)
        console.print(table)
        if hidden:
            console.print(
                Text(
                    f"(hidden to fit {console.width} columns: {', '.join(hidden)}; "
                    "--json has every field)",
                    style="dim",
                )
            )
        return
    table, _ = fit_table(columns, rows, None)
    plain = _Plain(width=_PIPED_WIDTH, color_system=None)
    with plain.capture() as captured:
        plain.print(table)
    for line in captured.get().splitlines():
        click.echo(line.rstrip())


STATUS_COLUMNS: Final = (
    Column("id"),
    Column("type", drop=2),
    Column("pid", drop=3, right=True),
    Column("status"),
    Column("uptime", drop=5, right=True),
    Column("restarts", drop=4, right=True),
    Column("heartbeat", drop=6, right=True),
    Column("assignment", drop=1),
    Column("last exit", drop=2, wrap=True),
)
"""``hubvisor status``'s agent table; on a narrow terminal heartbeat goes first, then
uptime, restarts, pid, type and last exit (id, status and assignment always show)."""
ITEM_COLUMNS: Final = (
    Column("id"),
    Column("type", drop=3),
    Column("status"),
    Column("attempt", drop=5, right=True),
    Column("deliveries", drop=4, right=True),
    Column("agent", drop=2),
    Column("source", drop=6),
    Column("outcome", drop=1, wrap=True),
)
"""``hubvisor work list``'s table (source goes first, then attempt, deliveries...)."""
LIST_COLUMNS: Final = (
    Column("supervisor", drop=2),
    Column("id"),
    Column("state"),
    Column("pid", drop=3, right=True),
    Column("restarts", drop=4, right=True),
    Column("uptime", drop=5, right=True),
    Column("last exit", drop=1, wrap=True),
)
"""``hubvisor ctl list``'s table."""

# --- end fitting ---


PRINTERS: dict[str, Printer] = {
    "list": _show_list,
    "count": _show_count,
    "logs": _show_lines,
    "terminate": _said("terminated"),
    "restart": _said("restarted"),
    "resize": _show_resize,
    "stop": _echo,
    "status": _show_status,
    "submit": _show_submitted,
    "work_list": _show_items,
    "work_show": _show_item,
    "work_retry": _show_retried,
    "work_cancel": _show_cancelled,
    "work_wait": _show_waited,
    "tail": _show_line,
    "events": _show_event,
    "budget": _echo,
}
"""The printer of each op, by the op's name."""
