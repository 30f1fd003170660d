"""Issue 24's targets, each reported as met or missed by ``suite.py`` from the same run.

Daemon targets (every N of the run, ratios to ``minimal`` of the same N and round set):
start within 1.5x, restart p50 within 2x and p99 within 3x, all dead within 1.5x, exited
within 2x, and hubvisor's RSS at most 40 MiB (with capture) at N = 1,000, beside its
import cost (the RSS of a hub whose only pool has size 0) and the per-child cost
((RSS at N - import cost) / N).

The other targets call the existing benchmarks (their functions, unchanged), unless
``--no-extra-targets``: heartbeat CPU at 1,000 agents under 3 % of a core
(``bench_heartbeat.run``), the registry mirror at 40,000 updates/s
(``bench_registry.registry_run``), ``supervisor.testing`` at 300 examples/s
(``bench_testing.with_hypothesis``), and work on Redis at 10,000 items/s through one hub
(``bench_work_redis._in_process``, with the memory queue's rate of the same run beside).
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# (key, what, metric, system, bound): a ratio of the system's median to minimal's median
RATIO_TARGETS = [
    ("start", "start within 1.5x minimal", "start", "hubvisor", 1.5),
    ("restart_p50", "restart p50 within 2x minimal", "restart_p50", "hubvisor", 2.0),
    ("restart_p99", "restart p99 within 3x minimal", "restart_p99", "hubvisor", 3.0),
    ("dead", "stop: all dead within 1.5x minimal", "dead", "hubvisor", 1.5),
    ("exited", "stop: exited within 2x minimal", "exited", "hubvisor", 2.0),
]
RSS_BOUND = 40.0  # MiB, hubvisor with capture at N = 1,000
RSS_AT = "1000"


def _row(
    key: str, what: str, n: str | None, value: float | None, bound: float, unit: str,
    met: bool | None, note: str = "",
) -> dict[str, Any]:  # fmt: skip
    verdict = "skipped" if met is None else "met" if met else "missed"
    return {"key": key, "target": what, "n": n, "value": value, "bound": bound,
            "unit": unit, "verdict": verdict, "note": note}  # fmt: skip


def daemon_targets(summary: dict[str, Any], import_rss: list[float]) -> list[dict[str, Any]]:
    """The ratio targets at every N of ``summary``, and the RSS target with its parts."""
    rows: list[dict[str, Any]] = []
    base = statistics.median(import_rss) if import_rss else None
    for n, systems in summary.items():
        hub = systems.get("hubvisor", {})
        for key, what, metric, system, bound in RATIO_TARGETS:
            cell = systems.get(system, {}).get(metric) or {}
            ratio = cell.get("ratio")
            met = None if ratio is None else ratio <= bound
            rows.append(_row(key, what, n, ratio, bound, "x", met))
        rss = (hub.get("rss") or {}).get("median")
        parts = ""
        if rss is not None and base is not None and int(n) > 0:
            parts = f"import {base:.1f} MiB + {(rss - base) * 1024 / int(n):.1f} KiB per child"
        what = f"RSS with capture <= {RSS_BOUND:g} MiB" + (" (N = 1,000)" if n == RSS_AT else "")
        met = None if rss is None else rss <= RSS_BOUND
        rows.append(_row("rss", what, n, rss, RSS_BOUND, "MiB", met, parts))
    return rows


def _measure(what: str, run: Callable[[], tuple[float, str]]) -> tuple[float | None, str]:
    try:
        return run()
    except Exception as exc:  # a benchmark that cannot run is reported, not fatal
        return None, f"failed: {type(exc).__name__}: {exc}"


def _heartbeat(quick: bool) -> tuple[float, str]:
    import bench_heartbeat

    n = 20 if quick else 1000
    cpu, rss = bench_heartbeat.run("heartbeat", n, 0.5 if quick else 10.0, 0.5 if quick else 5.0)
    return cpu, f"{n} bash agents, one HEARTBEAT a second each; hub RSS {rss:.1f} MiB"


def _registry(quick: bool) -> tuple[float, str]:
    import bench_registry
    import trio

    n = 2000 if quick else 20_000
    port = bench_registry.free_port()
    server = bench_registry.start_server(port)
    try:
        rates = []
        for _ in range(1 if quick else 3):
            elapsed, _ = trio.run(bench_registry.registry_run, port, n, 500)
            rates.append(n / elapsed)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    runs = ", ".join(f"{r:,.0f}" for r in rates)
    return statistics.median(rates), f"{n:,} new agents, batch_max 500; runs {runs}"


def _testing(quick: bool) -> tuple[float, str]:
    import bench_testing

    n = 30 if quick else 300
    tree = bench_testing._example_tree()
    rates = [bench_testing.with_hypothesis(tree, n) for _ in range(1 if quick else 3)]
    runs = ", ".join(f"{r:.0f}" for r in rates)
    return statistics.median(rates), f"{n} examples drawn by Hypothesis; runs {runs}"


def _work_redis(quick: bool) -> tuple[float, str]:
    import bench_work_redis as b
    import trio

    from supervisor import MemoryWorkQueue
    from supervisor.work.redis import RedisWorkQueue

    agents, items = (5, 300) if quick else (20, 3000)
    server = b.Server().start()
    try:
        memory = trio.run(b._in_process, MemoryWorkQueue(), agents, items)
        server.client().flushall()
        rate = trio.run(b._in_process, RedisWorkQueue(server.url), agents, items)
    finally:
        server.close()
    ratio = f"{rate / memory:.2f}x the memory queue ({memory:,.0f}/s)"
    return rate, f"{agents} no-op agents, {items:,} items; {ratio}"


EXTRA = [  # (key, target, bound, unit, lower is better, measure)
    ("heartbeat_cpu", "1,000 agents heartbeating: hub CPU < 3 % of a core", 3.0, "%", True,
     _heartbeat),
    ("registry", "registry mirror >= 40,000 updates/s", 40_000.0, "/s", False, _registry),
    ("testing", "supervisor.testing >= 300 examples/s", 300.0, "/s", False, _testing),
    ("work_redis", "work on Redis >= 10,000 items/s, one hub", 10_000.0, "/s", False,
     _work_redis),
]  # fmt: skip


def extra_targets(run: bool, quick: bool) -> list[dict[str, Any]]:
    """The other helpers' targets, measured by their benchmarks (``run=False``: skipped)."""
    rows: list[dict[str, Any]] = []
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    for key, what, bound, unit, lower, measure in EXTRA:
        if not run:
            rows.append(_row(key, what, None, None, bound, unit, None, "--no-extra-targets"))
            continue
        print(f"target {key} ...", end=" ", flush=True)
        value, note = _measure(key, lambda m=measure: m(quick))  # type: ignore[misc]
        met = None if value is None else (value < bound if lower else value >= bound)
        print(note if value is None else f"{value:,.2f} {unit}")
        rows.append(_row(key, what, None, value, bound, unit, met, note))
        if value is None:
            rows[-1]["verdict"] = "failed"  # the benchmark could not run: the note says why
    return rows


def hub_import_rss(launch: Callable[[Path], subprocess.Popen[bytes]]) -> float:
    """VmRSS (MiB) of ``hubvisor run`` on one pool of size 0, once its tree started: the
    import cost, without any child."""
    with tempfile.TemporaryDirectory(prefix="hvbench-empty-") as tmp:
        log = Path(tmp) / "hub.log"
        hub = launch(Path(tmp))
        try:
            deadline = time.perf_counter() + 60
            while " bench started" not in (log.read_text() if log.exists() else ""):
                if time.perf_counter() > deadline or hub.poll() is not None:
                    raise RuntimeError("the empty hub did not start")
                time.sleep(0.01)
            time.sleep(0.5)
            with open(f"/proc/{hub.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
            raise RuntimeError("no VmRSS")
        finally:
            hub.send_signal(signal.SIGTERM)
            try:
                hub.wait(30)
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait()


def report(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: target, N, measured, verdict, note."""
    lines = ["| target | N | measured | bound | verdict | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        value = "—" if r["value"] is None else _fmt(r["value"], r["unit"])
        n = "—" if r["n"] is None else f"{int(r['n']):,}"
        cells = [r["target"], n, value, _fmt(r["bound"], r["unit"]), r["verdict"], r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "/s":
        return f"{value:,.0f}/s"
    return f"{value:.2f} {unit}"
