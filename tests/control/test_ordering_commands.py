"""``hubvisor submit --priority/--delay/--not-before`` and how ``work list``, ``work show``
and ``status`` show a waiting item (issue 21), through the control socket of an
in-process hub with real agents."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from tests.control.test_commands import cli, served, tree
from tests.helpers import TIMEOUT, is_, wait_event


async def test_submit_with_priority_delay_and_not_before_and_how_they_show(
    tmp_path: Path,
) -> None:
    async with served(tree(), tmp_path) as (hub, events, path):
        with trio.fail_after(TIMEOUT):
            later = await cli(path, "submit", "w", '{"n": 1}', "--delay", "3600", "--priority", "4")
            at = await cli(path, "submit", "w", '{"n": 2}', "--not-before", "2099-01-01T00:00:00Z")
            iso = await cli(
                path, "submit", "w", '{"n": 3}', "--not-before", "2000-01-01T00:00:00+02:00"
            )
            bad = await cli(path, "submit", "w", '{"n": 4}', "--not-before", "next tuesday")
            both = await cli(
                path, "submit", "w", "{}", "--delay", "5", "--not-before", "2000-01-01T00:00:00"
            )
            listed = await cli(path, "work", "list")
            shown = await cli(path, "work", "show", later.stdout.strip())
            as_json = await cli(path, "work", "show", later.stdout.strip(), "--json")
            status = await cli(path, "status", "--json")
            plain = await cli(path, "status")
        await wait_event(events, is_("work_completed", item_id=iso.stdout.strip()))

    assert 0 == later.exit_code, later.output
    assert 1 == at.exit_code and "more than a year ahead" in at.stderr
    assert 0 == iso.exit_code  # in the past: ready at once, done
    assert 1 == bad.exit_code and "ISO 8601" in bad.stderr
    assert 1 == both.exit_code and "either delay or not_before" in both.stderr
    assert "queued p4 until" in listed.stdout
    assert "priority: 4" in shown.stdout and "waits until:" in shown.stdout
    item = json.loads(as_json.stdout)
    assert item["priority"] == 4 and item["status"] == "queued"
    assert item["not_before"] > item["created_at"]
    hub_status = json.loads(status.stdout)["hub"]
    assert hub_status["queues"]["w"]["delayed"] == 1
    assert "(1 of the queued delayed)" in plain.stdout


async def test_status_metrics_and_top_count_the_items_waiting_on_others(tmp_path: Path) -> None:
    """An item waiting for a delayed one: ``status`` counts it ``blocked`` beside the
    delayed one, ``hubvisor_work_waiting{reason="dependencies"}`` is 1, and top's queue
    line shows both as ``later``, none ready."""
    from supervisor._metrics import _waiting_by_reason
    from supervisor._top import poll

    async with served(tree(), tmp_path) as (hub, events, path):
        with trio.fail_after(TIMEOUT):
            first = await cli(path, "submit", "w", '{"n": 1}', "--delay", "3600")
            then = await cli(path, "submit", "w", '{"n": 2}', "--after", first.stdout.strip())
            status = await cli(path, "status", "--json")
            snap = await trio.to_thread.run_sync(poll, path)
        gauge = _waiting_by_reason(hub, {"w"})

    assert (0, 0) == (first.exit_code, then.exit_code), then.output
    assert {"queued": 2, "assigned": 0, "delayed": 1, "blocked": 1} == (
        json.loads(status.stdout)["hub"]["queues"]["w"]
    )
    by_reason = {s.labels["reason"]: s.value for s in gauge.samples}
    assert {"ready": 0, "delayed": 1, "dependencies": 1} == by_reason
    assert (snap.queued["w"], snap.later["w"]) == (2, 2)
