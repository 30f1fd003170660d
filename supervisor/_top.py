"""``hubvisor top``: a live view of a running hub, refreshed in place.

It polls the hub over its control socket (the ``list`` and ``status`` ops)
and shows the tree with each agent's status, CPU, memory, restarts, heartbeat age,
assignment and last exit, and the queues by agent type. CPU and memory are those of
each agent's whole process group, read from ``/proc`` (the hub runs on this host; an
agent whose pid is not visible here shows ``-``). ``q`` or Ctrl-C quits.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import click
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .control.client import ControlClientError, NoHubRunning, request
from .control.paths import NoHubExit, default_socket_path, env_socket_path, no_hub_report
from .control.printers import secs as _secs

if TYPE_CHECKING:
    from ._proc import GroupUsage

__all__ = ["ONCE_SAMPLE_GAP", "Snapshot", "poll", "render", "top"]

ONCE_SAMPLE_GAP: Final = 0.5
"""``top --once``: seconds between the two samples its CPU column is measured over (at
most ``--interval``)."""

_STATUS_STYLE = {
    "idle": "green",
    "busy": "cyan",
    "running": "green",
    "starting": "yellow",
    "stopping": "yellow",
    "backing_off": "red",
    "hung": "bold red",
    "stopped": "dim",
}


@attrs.frozen
class Snapshot:
    """What one poll of the hub returned.

    Attributes:
        rows: the ``list`` op's children (supervisors and workers), depth first.
        status: the ``status`` op's result (``hub`` and ``agents``).
        queued: ``(type, count)`` of the items waiting, by agent type.
        assigned: the same for the items agents hold.
        at: ``time.monotonic()`` when it was taken.
        later: of the queued items, those not ready yet, by agent type: waiting for
            their time (a delay or a retry delay) or for other items (``--after``).
    """

    rows: Sequence[Mapping[str, Any]]
    status: Mapping[str, Any]
    queued: Mapping[str, int]
    assigned: Mapping[str, int]
    at: float
    later: Mapping[str, int] = attrs.field(factory=dict)


def poll(path: Path, timeout: float = 5.0) -> Snapshot:
    """Ask the hub at ``path`` for its tree, its agents and its queues.

    Raises:
        NoHubRunning: nothing listens at ``path``.
        ControlClientError: the hub refused or did not answer in time.
    """
    rows = request(path, {"op": "list"}, timeout)
    status = request(path, {"op": "status"}, timeout)
    counts: dict[str, Counter[str]] = {"queued": Counter(), "assigned": Counter()}
    queues = status.get("hub", {}).get("queues")
    if queues is not None:  # counts by type: no item has to cross the socket
        for agent_type, c in queues.items():
            for state in counts:
                counts[state][agent_type] = int(c.get(state, 0))
    else:  # a hub from before status carried them
        for state in counts:
            items = request(path, {"op": "work_list", "status": state}, timeout)
            counts[state] = Counter(str(i.get("type")) for i in items)
    later = {
        str(t): int(c.get("delayed", 0)) + int(c.get("blocked", 0))
        for t, c in (queues or {}).items()
    }
    return Snapshot(rows, status, counts["queued"], counts["assigned"], time.monotonic(), later)


@attrs.define
class _CPU:
    """CPU use per process group between two samples, as a percentage of one core."""

    last: dict[int, tuple[float, float]] = attrs.field(factory=dict)  # pgid -> (cpu s, at)

    def update(self, usage: Mapping[int, GroupUsage], at: float) -> dict[int, float]:
        percent = {}
        for pgid, used in usage.items():
            before = self.last.get(pgid)
            if before is not None and at > before[1] and used.cpu_seconds >= before[0]:
                percent[pgid] = 100.0 * (used.cpu_seconds - before[0]) / (at - before[1])
        self.last = {pgid: (used.cpu_seconds, at) for pgid, used in usage.items()}
        return percent


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 1024:
        return f"{value}B"
    size = value / 1024
    for unit in ("K", "M"):
        if size < 1024:
            return f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}G"


def render(
    snap: Snapshot,
    usage: Mapping[int, GroupUsage],
    cpu: Mapping[int, float],
    *,
    problem: str | None = None,
    interval: float = 1.0,
    height: int | None = None,
) -> RenderableType:
    """One frame: a header, the queues by type, and the tree with every agent.

    ``height``: the terminal's lines; a tree that does not fit ends with a line saying
    how many rows are left out (the header and the queues always show).
    """
    hub = snap.status.get("hub", {})
    agents = {a["id"]: a for a in snap.status.get("agents", [])}
    work = ", ".join(f"{n} {s}" for s, n in hub.get("work", {}).items() if n) or "none"
    header = Text.assemble(
        ("hubvisor top", "bold"),
        f"  hub: {hub.get('id', '?')} (pid {hub.get('pid', '?')})  "
        f"{hub.get('agents', len(agents))} agents  work: {work}  "
        f"every {interval:g}s, q quits",
    )
    table = Table(box=box.SIMPLE_HEAD, expand=False, pad_edge=False)
    right = {"pid", "cpu", "mem", "restarts", "heartbeat"}
    columns = ("agent", "type", "pid", "status", "cpu", "mem", "restarts", "heartbeat")
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", no_wrap=True)
    table.add_column("assignment", no_wrap=True)
    table.add_column("last exit", overflow="fold")
    tree = list(_tree(snap.rows))
    hidden = 0
    if height is not None:
        queue_lines = 5 + len(set(snap.queued) | set(snap.assigned) | _types(agents))
        room = max(1, height - queue_lines - (1 if problem else 0) - 5)  # header, table head
        if len(tree) > room:
            hidden = len(tree) - (room - 1)
            tree = tree[: room - 1]
    for depth, row in tree:
        indent = "  " * depth
        if row.get("kind") == "supervisor":
            table.add_row(
                Text(f"{indent}{row['id']}/", style="bold"),
                "",
                "",
                Text(row["state"], style=_STATUS_STYLE.get(row["state"], "")),
                "",
                "",
                str(row["restarts"]),
                "",
                "",
                Text(row.get("last_exit") or "", style="red"),
            )
            continue
        a = agents.get(row["id"], {})
        status = str(a.get("status") or row["state"])
        pid = row.get("pid")
        used = usage.get(pid) if pid is not None else None
        load = cpu.get(pid) if pid is not None else None
        last_exit = a.get("last_exit", row.get("last_exit")) or ""
        table.add_row(
            Text(f"{indent}{row['id']}"),
            Text(row.get("agent_type") or "-"),
            str(pid or "-"),
            Text(status, style=_STATUS_STYLE.get(status, "")),
            "-" if load is None else f"{load:.0f}%",
            _bytes(used.resident_bytes if used is not None else None),
            str(row["restarts"]),
            _secs(a.get("heartbeat_age")),
            Text(a.get("assignment") or "-"),
            Text(last_exit, style="red" if last_exit else ""),
        )
    queues = _queues(snap, agents)
    parts: list[RenderableType] = [header]
    if problem:
        parts.append(Text(problem, style="bold red"))
    parts.extend([queues, table])
    if hidden:
        parts.append(Text(f" … {hidden} more rows: enlarge the terminal", style="dim"))
    return Group(*parts)


def _queues(snap: Snapshot, agents: Mapping[str, Mapping[str, Any]]) -> Table:
    """The queues by agent type: waiting (ready for an agent), later (delayed or waiting
    for other items), in flight, agents and idle ones."""
    queues = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="queues", title_justify="left")
    for col in ("type", "waiting", "later", "in flight", "agents", "idle"):
        queues.add_column(col, justify="left" if col == "type" else "right")
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    for a in agents.values():
        by_type[str(a.get("type") or "-")][str(a.get("status"))] += 1
    for t in sorted(set(by_type) | set(snap.queued) | set(snap.assigned)):
        queues.add_row(
            Text(t),
            str(snap.queued.get(t, 0) - snap.later.get(t, 0)),  # ready for an agent
            str(snap.later.get(t, 0)),
            str(snap.assigned.get(t, 0)),
            str(sum(by_type[t].values())),
            str(by_type[t]["idle"]),
        )
    return queues


def _types(agents: Mapping[str, Mapping[str, Any]]) -> set[str]:
    return {str(a.get("type") or "-") for a in agents.values()}


def _tree(rows: Sequence[Mapping[str, Any]]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """The rows as a tree walk: ``(depth, row)``, each supervisor before its children."""
    under: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        under[str(row["supervisor"])].append(row)
    children = {f"{r['supervisor']}/{r['id']}" for r in rows if r.get("kind") == "supervisor"}
    roots = [p for p in under if p not in children]

    def walk(path: str, depth: int) -> Iterator[tuple[int, Mapping[str, Any]]]:
        for row in under.get(path, []):
            yield depth, row
            if row.get("kind") == "supervisor":
                yield from walk(f"{path}/{row['id']}", depth + 1)

    for root in roots:
        yield from walk(root, 0)


class _Keys:
    """Keys pressed on stdin, one at a time (cbreak mode on a terminal: no Enter needed,
    no echo; Ctrl-C still interrupts). Anything else as stdin is read as it comes."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self._saved: Any = None

    def __enter__(self) -> _Keys:
        try:
            fd = sys.stdin.fileno()
        except (OSError, ValueError):
            return self  # no stdin at all: only Ctrl-C quits
        self.fd = fd
        if os.isatty(fd):
            import termios
            import tty

            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None and self.fd is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def wait(self, timeout: float) -> str:
        """What was typed within ``timeout`` seconds (``""``: nothing)."""
        if self.fd is None:
            time.sleep(max(0.0, timeout))
            return ""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return ""
        data = os.read(self.fd, 64)
        if not data:  # end of stdin (e.g. </dev/null): stop reading it
            self.fd = None
        return data.decode(errors="replace")


def _socket(socket_path: Path | None, hub_id: str | None) -> Path:
    if socket_path is not None:
        return socket_path
    if hub_id:
        return default_socket_path(hub_id)
    return env_socket_path()


@click.command()
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The hub's control socket (default: $HUBVISOR_SOCKET, else the default path for "
    "--hub-id).",
)
@click.option(
    "--hub-id",
    default=None,
    help="The id of the hub to watch (its root spec's name; default: $HUBVISOR_HUB_ID, "
    "else the one hub running, else hub).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and logs).")
def top(socket_path: Path | None, hub_id: str | None, interval: float, once: bool) -> None:
    """Watch a running hub live: the tree with each agent's status, CPU, memory,
    restarts, heartbeat age, assignment and last exit, and the queues by type.

    Press q (or Ctrl-C) to quit.
    """
    path = _socket(socket_path, hub_id)
    try:
        snap = poll(path)
    except NoHubRunning as exc:
        raise NoHubExit(no_hub_report(path)) from exc
    except ControlClientError as exc:
        raise click.ClickException(str(exc)) from exc
    cpu = _CPU()
    usage = _sample(snap)
    load = cpu.update(usage, time.monotonic())
    if once:
        # CPU is a rate: a second sample a moment later gives it (one alone shows "-").
        time.sleep(min(interval, ONCE_SAMPLE_GAP))
        usage = _sample(snap)
        load = cpu.update(usage, time.monotonic())
        console = Console()
        if not console.is_terminal:  # a pipe or a log: every column, no colour codes
            console = Console(width=200, color_system=None)
        console.print(render(snap, usage, load, interval=interval))
        return
    console = Console()
    try:
        with (
            _Keys() as keys,
            Live(
                render(snap, usage, load, interval=interval, height=console.height),
                console=console,
                auto_refresh=False,
                vertical_overflow="crop",
            ) as live,
        ):
            while True:
                deadline = time.monotonic() + interval
                while (left := deadline - time.monotonic()) > 0:
                    if "q" in keys.wait(left).lower():
                        return
                problem = None
                try:
                    snap = poll(path)
                except (NoHubRunning, ControlClientError) as exc:
                    problem = f"{exc} (retrying every {interval:g}s)"
                usage = _sample(snap)
                load = cpu.update(usage, time.monotonic())
                frame = render(
                    snap, usage, load, problem=problem, interval=interval, height=console.height
                )
                live.update(frame, refresh=True)
    except KeyboardInterrupt:
        return


def _sample(snap: Snapshot) -> dict[int, GroupUsage]:
    # Imported here: `hubvisor` imports this module for every command, and only top
    # needs the metrics module (and prometheus_client, 50 ms to import).
    from ._proc import sample_groups

    pids = [r["pid"] for r in snap.rows if r.get("kind") == "worker" and r.get("pid")]
    with contextlib.suppress(OSError):
        return sample_groups(pids)
    return {}  # pragma: no cover - sample_groups skips what it cannot read
