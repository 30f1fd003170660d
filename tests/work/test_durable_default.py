"""The embedded default keeps work across a hub's death: real ``hubvisor run`` processes
with the SQLite store (no ``--work``, no ``--redis``), SIGKILLed and started again on the
same state directory, with real agents.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from ..redis_hubs import HUBVISOR, HubProc, wait_for


def _items(hub: HubProc) -> dict[str, dict[str, Any]]:
    return {i["id"]: i for i in hub.call("work_list")}


def test_a_hub_sigkilled_with_work_queued_and_held_finishes_each_item_once_after_a_restart(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    args = ("--state-dir", str(state))
    hub = HubProc(tmp_path, "solo", None, size=3, args=args).start()
    try:
        ids = [hub.submit({"n": n, "sleep": 1.0})["id"] for n in range(50)]
        assert len(set(ids)) == 50
        wait_for(
            lambda: sum(i["status"] == "assigned" for i in _items(hub).values()) == 3,
            30,
            "three items held by the three agents",
        )
        before = _items(hub)
        held = {i for i, v in before.items() if v["status"] == "assigned"}
        queued = {i for i, v in before.items() if v["status"] == "queued"}
        assert len(held) == 3 and len(queued) >= 40  # killed mid-flight: both kinds
        agents = hub.agent_pids()
        hub.kill()  # SIGKILL: no stop, no hand-back, no final write
        wait_for(lambda: not any(_alive(p) for p in agents), 30, "the old agents to go")

        again = HubProc(tmp_path, "solo", None, size=3, args=args).start()
        hub = again
        after = _items(again)
        assert set(after) == set(ids)  # nothing lost
        for i in held:  # back in the queue at once, the lost attempt counted
            assert after[i]["deliveries"] >= 1
            assert after[i]["history"][0]["outcome"] == "reclaimed:exit"
        wait_for(
            lambda: all(v["status"] == "completed" for v in _items(again).values()),
            120,
            "every item completed",
        )
        done = _items(again)
        for i, v in done.items():
            n = ids.index(i)
            assert v["result"]["double"] == 2 * n
            outcomes = Counter(h["outcome"] for h in v["history"])
            assert outcomes["completed"] == 1, (i, v["history"])  # exactly once
        for i in held:  # the whole history across the restart: killed, then completed
            assert [h["outcome"] for h in done[i]["history"]][-2:] == [
                "reclaimed:exit",
                "completed",
            ]
            assert done[i]["deliveries"] == 2
        for i in queued:
            assert done[i]["deliveries"] == 1
    finally:
        hub.stop()


def test_a_graceful_stop_hands_held_work_back_without_spending_deliveries(
    tmp_path: Path,
) -> None:
    args = ("--state-dir", str(tmp_path / "state"))
    hub = HubProc(tmp_path, "solo", None, size=2, args=args).start()
    try:
        ids = [hub.submit({"n": n, "sleep": 30})["id"] for n in range(3)]
        wait_for(
            lambda: sum(i["status"] == "assigned" for i in _items(hub).values()) == 2,
            30,
            "two items held",
        )
        hub.stop()  # SIGTERM: the agents are stopped, their items handed back
        assert hub.proc is not None and hub.proc.returncode == 0
        # Agents of another type only: the items stay as the stop left them.
        again = HubProc(tmp_path, "solo", None, size=1, agent_type="x", args=args).start()
        hub = again
        items = _items(again)
        assert set(items) == set(ids)
        for v in items.values():
            assert v["status"] == "queued"
            assert v["deliveries"] == 0  # a stop is not the item's fault
        assert sum(h["outcome"] == "reclaimed:stop" for v in items.values() for h in v["history"])
    finally:
        hub.stop()


def test_a_second_hub_on_the_same_state_directory_is_refused_naming_the_first(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    hub = HubProc(tmp_path, "one", None, size=1, args=("--state-dir", str(state))).start()
    try:
        spec = tmp_path / "other.py"
        spec.write_text(hub.spec.read_text())
        second = subprocess.run(
            [HUBVISOR, "run", str(spec), "--hub-id", "two", "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ},
        )
        assert second.returncode != 0
        assert str(hub.pid) in second.stderr, second.stderr
        assert str(state) in second.stderr
        assert hub.proc is not None and hub.proc.poll() is None  # the first goes on
    finally:
        hub.stop()


def test_the_default_state_directory_is_per_hub_id_and_printed(tmp_path: Path) -> None:
    hub = HubProc(tmp_path, "named-hub", None, size=1).start()
    try:
        item = hub.submit({"n": 1})
        wait_for(lambda: _items(hub)[item["id"]]["status"] == "completed", 30, "done")
    finally:
        hub.stop()
    state = Path(os.environ["XDG_STATE_HOME"]) / "hubvisor" / "named-hub"
    assert (state / "work.sqlite3").is_file()
    assert oct(state.stat().st_mode & 0o777) == oct(0o700)
    assert str(state) in hub.log.read_text()
    again = HubProc(tmp_path, "named-hub", None, size=1, agent_type="x").start()
    try:
        shown = again.call("work_show", id=item["id"])
        assert shown["status"] == "completed" and shown["result"]["double"] == 2
    finally:
        again.stop()


def test_work_memory_keeps_nothing_on_disk_and_says_what_a_stop_loses(tmp_path: Path) -> None:
    hub = HubProc(tmp_path, "mem", None, size=1, args=("--work", "memory")).start()
    try:
        hub.submit({"n": 1, "sleep": 30})
    finally:
        hub.stop()
    log = hub.log.read_text()
    assert "memory only" in log and "1 work item not done" in log
    assert not (Path(os.environ["XDG_STATE_HOME"]) / "hubvisor" / "mem").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
