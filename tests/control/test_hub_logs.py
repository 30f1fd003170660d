"""What ``hubvisor run`` writes to its log, read from real runs: JSON lines and ISO
times (--log-format, --log-level), the work summed up, and what a stop leaves."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
from click.testing import CliRunner, Result

from supervisor._cli import main
from tests import raw_agent
from tests.control.test_cli import Hubvisor, finish, start_hubvisor
from tests.helpers import PY, TIMEOUT

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def write_tree(tmp_path: Path, size: int = 1) -> Path:
    tmp_path.mkdir(exist_ok=True)
    script = tmp_path / "agent.py"
    script.write_text(raw_agent.PROGRAM)
    spec = tmp_path / "tree.py"
    spec.write_text(
        "from supervisor import ChildSpec, PoolSpec, SupervisorSpec\n"
        f"t = ChildSpec(id='t', argv=[{PY!r}, {str(script)!r}], shutdown=2.0, start_period=0.2)\n"
        "spec = SupervisorSpec(name='logs', children=[\n"
        f"    PoolSpec(agent_type='w', template=t, size={size})])\n"
    )
    return spec


async def cli(path: Path, *args: str) -> Result:
    return await trio.to_thread.run_sync(
        lambda: CliRunner().invoke(main, [*args, "--socket", str(path)])
    )


async def all_lines(hv: Hubvisor) -> tuple[int, list[str]]:
    """Wait for the hub to end: its exit code and the lines it logged not read yet."""
    assert hv.proc.stderr is not None
    with trio.fail_after(TIMEOUT):
        rest = [hv._buf]
        while chunk := await hv.proc.stderr.receive_some(65536):
            rest.append(chunk)
        code = await hv.proc.wait()
    await hv.proc.stderr.aclose()
    return code, hv.lines + b"".join(rest).decode().splitlines()


async def run_one_item(tmp_path: Path, *options: str) -> tuple[Hubvisor, list[str]]:
    """``hubvisor run`` a one-agent tree with ``options``, have it complete one item, stop
    it with SIGTERM; the hub and every line it logged."""
    path = tmp_path / "hub.sock"
    hv = await start_hubvisor("run", str(write_tree(tmp_path)), "--socket", str(path), *options)
    try:
        seen = [(await hv.wait_line("logs started")).string]
        submitted = await cli(path, "submit", "w", '{"n": 4}', "--wait")
        assert 0 == submitted.exit_code, submitted.output
        hv.proc.terminate()
        code, lines = await all_lines(hv)
        assert 0 == code, lines
        return hv, seen + lines
    finally:
        if hv.proc.returncode is None:
            hv.proc.kill()
            await finish(hv)


async def test_json_lines_from_a_real_run(tmp_path: Path) -> None:
    """--log-format json: every line is a JSON object with an ISO 8601 time with its
    zone, a level, the event's kind, agent and item (null when not about one) and the
    message; with --log-level debug each completed item has its line."""
    _, lines = await run_one_item(tmp_path, "--log-format", "json", "--log-level", "debug")

    records: list[dict[str, Any]] = [json.loads(line) for line in lines if line]
    for record in records:
        assert {"time", "level", "event", "agent", "item", "message"} <= set(record), record
        assert datetime.fromisoformat(record["time"]).tzinfo is not None
        assert record["level"] in ("debug", "info", "warning", "error")
    done = [r for r in records if r["event"] == "work_completed"]
    assert 1 == len(done) and "debug" == done[0]["level"]
    assert re.fullmatch(r"w-\d+", done[0]["item"]) and done[0]["agent"] == "w-agent-1"
    started = next(r for r in records if r["event"] == "running")
    assert ("w-agent-1", None) == (started["agent"], started["item"])
    assert any(r["event"] is None and "control socket" in r["message"] for r in records)
    summary = [r for r in records if r["event"] == "work_summary"]
    assert [(1, 0)] == [(r["completed"], r["failed"]) for r in summary]


async def test_text_lines_start_with_an_iso_time(tmp_path: Path) -> None:
    """The text format: each line starts with an ISO 8601 time with its zone; at the
    default level a completed item has no line of its own, the summary counts it."""
    _, lines = await run_one_item(tmp_path)

    assert lines and all(re.match(rf"{ISO} (INFO|WARNING|ERROR) ", line) for line in lines), lines
    assert not [line for line in lines if " completed by " in line]
    assert [line for line in lines if re.search(r"work: 1 completed, 0 failed in the last", line)]


async def test_a_dead_item_says_its_error_once_and_bounded(tmp_path: Path) -> None:
    """An item that failed three times with the same long error: one DEAD line, the
    error said once, cut at MAX_LOG_ERROR characters with "…"; `work show` keeps it whole."""
    path = tmp_path / "hub.sock"
    error = "disk full " + "x" * 500
    hv = await start_hubvisor("run", str(write_tree(tmp_path)), "--socket", str(path))
    try:
        await hv.wait_line("logs started")
        payload = json.dumps({"fail_retry": error, "retry_after": 0})
        dead = await cli(path, "submit", "w", payload, "--max-deliveries", "3", "--wait")
        assert 1 == dead.exit_code, dead.output
        shown = json.loads((await cli(path, "work", "show", "w-1", "--json")).stdout)
        assert [error] * 3 == [h["reason"] for h in shown["history"]]  # kept whole
        hv.proc.terminate()
        code, lines = await all_lines(hv)
        assert 0 == code, lines
    finally:
        if hv.proc.returncode is None:
            hv.proc.kill()
            await finish(hv)

    dead_lines = [line for line in lines if "DEAD" in line or "dead-lettered" in line]
    assert 1 == len(dead_lines), dead_lines
    (line,) = dead_lines
    assert 1 == line.count("disk full") and "x…) (3 times) (hubvisor work retry" in line
    assert "x" * 190 + "…" in line and "x" * 191 not in line  # cut at 200 characters
    assert len(line) < 350


async def stop_summary(tmp_path: Path, *options: str) -> dict[str, Any]:
    """A one-agent hub holding one item with another queued, stopped by SIGTERM: its
    summary line (JSON)."""
    path = tmp_path / "hub.sock"
    spec = write_tree(tmp_path)
    hv = await start_hubvisor(
        "run", str(spec), "--socket", str(path), "--log-format", "json", *options
    )
    try:
        await hv.wait_line("logs started")
        for payload in ('{"hold": true}', '{"n": 1}'):
            assert 0 == (await cli(path, "submit", "w", payload)).exit_code
        await hv.wait_line("w-agent-1 running")
        with trio.fail_after(TIMEOUT):
            while (await cli(path, "status", "--json")).stdout.count('"assignment": null'):
                await trio.sleep(0.05)  # until the agent holds the first item
        hv.proc.terminate()
        code, lines = await all_lines(hv)
        assert 0 == code, lines
    finally:
        if hv.proc.returncode is None:
            hv.proc.kill()
            await finish(hv)
    records = [json.loads(line) for line in lines]
    summaries = [r for r in records if r["event"] == "hub_stop"]
    assert 1 == len(summaries), lines
    return summaries[0]


async def test_a_stop_says_what_it_leaves(tmp_path: Path) -> None:
    """The stop's summary: agents stopped, items handed back, items not done kept by
    the store (SQLite) or lost (memory)."""
    kept = await stop_summary(tmp_path / "a", "--state-dir", str(tmp_path / "state"))
    assert (1, 1, 2, True) == (
        kept["agents_stopped"],
        kept["handed_back"],
        kept["not_done"],
        kept["kept"],
    )
    assert kept["message"] == (
        "hub stop: 1 agent stopped, 1 item handed back, 2 items not done kept by the work store"
    )
    lost = await stop_summary(tmp_path / "b", "--work", "memory")
    assert lost["message"].endswith("2 items not done lost with the hub (--work memory)")
