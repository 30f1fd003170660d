"""The embedded SQLite work store beside the in-memory queue, in the same run: items per
second through no-op agents, the commit cost per item, and what a hub SIGKILL loses.

Usage: python benchmarks/bench_work_sqlite.py [--agents 100] [--items 10000] [--runs 3]
                                              [--loss 200] [--json FILE]

* Throughput, items/s through ``--agents`` no-op agents under one hub in this process:
  submit ``--items`` at once, wait for the last completion; the in-memory queue, then the
  SQLite store (``fsync="normal"`` and ``"always"``) in a fresh directory each; ``--runs``
  alternating runs, medians. The goal (issue 20): SQLite at least half the memory
  queue's items/s.
* Commit cost: the store's own count of commits, rows written and seconds spent
  committing during the SQLite runs (per item: every item is written at submit, at its
  attempt's start and at its end, coalesced per round).
* Loss: ``hubvisor run`` (the SQLite default, ``--fsync normal`` and ``always``): submit
  ``--loss`` items through the control socket, SIGKILL the hub right after the last
  answer, open the database again and count the items that survived.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor import ChildSpec, Hub, MemoryWorkQueue, PoolSpec, WorkService  # noqa: E402
from supervisor.control.client import request  # noqa: E402
from supervisor.work.sqlite import SqliteWorkQueue  # noqa: E402

HUBVISOR = str(Path(sys.executable).with_name("hubvisor"))

# The no-op agent: HELLO, READY, then answer every ASSIGN at once.
AGENT = r"""
import json, os, socket
s = socket.socket(fileno=int(os.environ["HUBVISOR_NOTIFY_FD"]))
s.send(b"HELLO=1"); s.send(b"READY")
while True:
    data = s.recv(65536)
    if not data or data == b"STOP":
        break
    if data.startswith(b"ASSIGN="):
        a = json.loads(data[7:])
        s.send(b"RESULT=" + json.dumps({"item": a["item"], "attempt": a["attempt"],
                                          "result": 1}, separators=(",", ":")).encode())
"""

SPEC = """
import sys
from supervisor import ChildSpec, PoolSpec
tree = [PoolSpec(agent_type="idle", size=1, template=ChildSpec(
    id="idle", argv=[sys.executable, "-c", {agent!r}], agent_type="idle", shutdown=1.0))]
"""


def _pool(size: int) -> PoolSpec:
    tpl = ChildSpec(id="w", argv=[sys.executable, "-c", AGENT], agent_type="w")
    return PoolSpec(agent_type="w", size=size, max_size=max(size, 1), template=tpl)


async def _through(queue: Any, agents: int, items: int) -> float:
    hub = Hub([_pool(agents)], work=WorkService(queue, max_queued=None), hub_id="bench")
    done = hub.bus.subscribe(kinds=("work_completed",))
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        while len(hub.work.idle_members("w", [r.info.id for r in hub.which_children()])) < agents:
            await trio.sleep(0.01)
        await trio.sleep(0.5)
        start = time.perf_counter()
        for n in range(items):
            hub.work.submit("w", n)
        count = 0
        async for _event in done:
            count += 1
            if count == items:
                break
        took = time.perf_counter() - start
        await hub.stop()
    return items / took


def _sqlite_run(
    tmp: Path, agents: int, items: int, fsync: str, costs: list[dict[str, float]]
) -> float:
    state = Path(tempfile.mkdtemp(dir=tmp, prefix=f"sqlite-{fsync}-"))
    queue = SqliteWorkQueue(state, fsync=fsync, keep_finished=items)  # type: ignore[arg-type]
    try:
        rate = trio.run(_through, queue, agents, items)
        commits, rows, seconds = queue.write_stats
        costs.append({"commits": commits, "rows": rows, "commit_seconds": seconds, "items": items})
        return rate
    finally:
        queue.close()


def _loss(tmp: Path, fsync: str, items: int) -> int:
    state = Path(tempfile.mkdtemp(dir=tmp, prefix=f"loss-{fsync}-"))
    spec = tmp / "loss_spec.py"
    spec.write_text(SPEC.format(agent=AGENT))
    sock = tmp / f"loss-{fsync}.sock"
    argv = [HUBVISOR, "run", str(spec), "--hub-id", "loss", "--socket", str(sock)]
    argv += ["--state-dir", str(state), "--fsync", fsync]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                request(sock, {"op": "status"}, 5)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the loss hub did not start") from None
                time.sleep(0.05)
        answered = 0
        for n in range(items):  # a type no agent takes: every item stays queued
            reply = request(sock, {"op": "submit", "type": "later", "payload": n}, 10)
            answered += bool(reply.get("stored"))
        proc.kill()  # right after the last answer
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    db = sqlite3.connect(state / "work.sqlite3")
    try:
        kept = db.execute("SELECT count(*) FROM items WHERE type = 'later'").fetchone()[0]
    finally:
        db.close()
    return answered - int(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loss", type=int, default=200, help="items submitted per loss run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="hubvisor-bench-work-sqlite-"))
    rates: dict[str, list[float]] = {"memory": [], "sqlite": [], "sqlite_always": []}
    costs: dict[str, list[dict[str, float]]] = {"normal": [], "always": []}
    results: dict[str, Any] = {"agents": args.agents, "items": args.items, "runs": args.runs}
    try:
        for _ in range(args.runs):
            rates["memory"].append(
                trio.run(
                    _through, MemoryWorkQueue(keep_finished=args.items), args.agents, args.items
                )
            )
            rates["sqlite"].append(
                _sqlite_run(tmp, args.agents, args.items, "normal", costs["normal"])
            )
            rates["sqlite_always"].append(
                _sqlite_run(tmp, args.agents, args.items, "always", costs["always"])
            )
        results["items_per_s"] = rates
        results["median"] = {k: statistics.median(v) for k, v in rates.items()}
        results["commit_cost"] = costs
        if args.loss:
            results["loss"] = {f: _loss(tmp, f, args.loss) for f in ("normal", "always")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = results["median"]
    print(f"items/s through {args.agents} no-op agents, {args.items} items, {args.runs} runs:")
    print(f"  in-memory queue:                 {med['memory']:8,.0f}")
    for key, label in (("sqlite", "normal"), ("sqlite_always", "always")):
        print(
            f"  SQLite store, --fsync {label:6}:    {med[key]:8,.0f}"
            f"  ({med[key] / med['memory']:.2f}x in-memory)"
        )
    for label, runs in costs.items():
        commits = sum(c["commits"] for c in runs)
        secs = sum(c["commit_seconds"] for c in runs)
        items = sum(c["items"] for c in runs)
        rows = sum(c["rows"] for c in runs)
        print(
            f"  commit cost, --fsync {label:6}: {secs / items * 1e6:6.1f} us per item "
            f"({commits / items:.3f} commits and {rows / items:.2f} row writes per item, "
            f"{secs / max(commits, 1) * 1e3:.2f} ms per commit)"
        )
    for setting, lost in results.get("loss", {}).items():
        print(
            f"hub SIGKILL right after the last answer, --fsync {setting}: lost {lost} of "
            f"{args.loss} acknowledged"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
