"""Tables that fit: ``status`` and ``work list`` in an 80-column terminal (a real
pseudo-terminal, its size set with ``TIOCSWINSZ``, ``COLUMNS`` unset) drop columns by
priority instead of cutting headers; piped, their lines carry no trailing spaces."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import trio
from rich.cells import cell_len

from supervisor.control.printers import ITEM_COLUMNS, STATUS_COLUMNS, Column, fit_table
from tests.control.test_commands import agent, served, tree
from tests.helpers import TIMEOUT, is_, until, wait_event

_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07)")


def in_terminal(argv: list[str], columns: int = 80, lines: int = 24) -> str:
    """Run ``argv`` on a new pseudo-terminal of ``columns`` x ``lines``; its output
    without colour codes or carriage returns."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], TIMEOUT)
            assert ready, f"{argv} printed nothing for {TIMEOUT}s"
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every process on the terminal closed it
                break
            if not data:
                break
            chunks.append(data)
        assert 0 == proc.wait(timeout=TIMEOUT), b"".join(chunks)
    finally:
        os.close(master)
        if proc.poll() is None:  # pragma: no cover - a failed assertion above
            proc.kill()
            proc.wait()
    return _ANSI.sub("", b"".join(chunks).decode()).replace("\r", "")


def hubvisor(*args: str) -> list[str]:
    return [sys.executable, "-m", "supervisor", *args]


def header_of(output: str, first: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.split()[:1] == [first])
    return line.split()


async def test_status_and_work_list_fit_80_columns_in_a_terminal(tmp_path: Path) -> None:
    """At 80 columns the status drops heartbeat, uptime and restarts (in that order)
    and keeps id, type, status, assignment and last exit whole; work list keeps its
    outcome; no line is wider than the terminal, no header is cut."""
    crash = tmp_path / "crash"
    crash.touch()
    spec = tree(agent("reviewer-01", "reviewer"), agent("reviewer-02", "reviewer"))
    async with served(spec, tmp_path) as (hub, events, path):
        await wait_event(events, is_("running", "reviewer-02"))
        crashing = hub.work.submit("reviewer", {"crash_if": str(crash)}, max_deliveries=1)
        await until(lambda: hub.work.get(crashing.id).status == "dead")
        crashed = hub.work.get(crashing.id).history[-1].agent
        await wait_event(events, is_("running", crashed))
        held = hub.work.submit("reviewer", {"hold": True})
        await until(lambda: hub.work.get(held.id).status == "assigned")
        for n in range(3):
            done = hub.work.submit("reviewer", {"n": n})
            await until(lambda d=done: hub.work.get(d.id).status == "completed")  # type: ignore[misc]
        status = await trio.to_thread.run_sync(
            in_terminal, hubvisor("status", "--socket", str(path))
        )
        items = await trio.to_thread.run_sync(
            in_terminal, hubvisor("work", "list", "--socket", str(path))
        )

    for output in (status, items):
        widest = max(cell_len(line) for line in output.splitlines())
        assert widest <= 80, output
        assert "…" not in output, output
    assert ["id", "type", "pid", "status", "assignment", "last", "exit"] == header_of(
        status, "id"
    ), status
    assert "exited with code 3" in status
    assert re.search(rf"{held.id} ", status)
    assert "(hidden to fit 80 columns: uptime, restarts, heartbeat;" in status
    assert {"id", "type", "status", "agent", "outcome"} <= set(header_of(items, "id")), items
    assert re.search(r"\{\"double\": 4,", items), items


async def test_piped_tables_have_no_trailing_spaces(tmp_path: Path) -> None:
    """Piped (not a terminal), every column shows and no line ends in padding."""
    async with served(tree(agent("a1")), tmp_path) as (hub, events, path):
        await wait_event(events, is_("running", "a1"))
        item = hub.work.submit("w", {"n": 21})
        await until(lambda: hub.work.get(item.id).status == "completed")
        outputs = []
        for args in (["status"], ["work", "list"], ["ctl", "list"]):
            socket = ["--socket", str(path)]
            argv = (
                hubvisor(*args, *socket) if args[0] != "ctl" else hubvisor("ctl", *socket, "list")
            )
            done = await trio.run_process(argv, capture_stdout=True)
            outputs.append(done.stdout.decode())

    for output in outputs:
        assert output.strip(), outputs
        assert [] == [line for line in output.splitlines() if line != line.rstrip()], output
        assert "\x1b" not in output
    assert header_of(outputs[0], "id")[-2:] == ["last", "exit"]
    assert header_of(outputs[1], "id") == [c.name for c in ITEM_COLUMNS]
    assert '{"double": 42, "by": "a1"}' in outputs[1]


def test_fit_drops_by_priority_and_wraps_the_free_text_column() -> None:
    """The highest ``drop`` goes first; columns of drop 0 always stay; a long last exit
    wraps (down to 20 cells) rather than costing another column."""
    row = ("agent-1", "w", "123", "idle", "1.0s", "0", "0.1s", "-", "x" * 60)
    table, hidden = fit_table(STATUS_COLUMNS, [row], 80)
    assert ["uptime", "heartbeat"] == hidden
    table, hidden = fit_table(STATUS_COLUMNS, [row], 10)
    assert ["id", "status"] == [c.header for c in table.columns]
    cols = (Column("a"), Column("b", drop=1))
    assert ([], 2) == (
        fit_table(cols, [("x", "y")], None)[1],
        len(fit_table(cols, [], None)[0].columns),
    )
