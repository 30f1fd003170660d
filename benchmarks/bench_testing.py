"""``supervisor.testing`` throughput: schedule examples a second on the docs' example tree.

Usage: python benchmarks/bench_testing.py [--examples 300] [--repeat 3] [--json FILE]

Runs the property of ``docs/examples/test_my_tree.py`` (``run_schedule(TREE, schedule,
max_agents=5)`` then ``check_all``) and reports, per repeat:

* ``hypothesis``: ``--examples`` examples drawn by Hypothesis from ``schedules(TREE)``
  (no database, no deadline, no shrinking needed: the property holds), examples/s as a
  user's ``pytest`` run sees it, drawing included;
* ``run+check``: the same number of schedules drawn first, then only ``run_schedule`` and
  ``check_all`` timed: the simulator's own rate;
* ``draw``: Hypothesis drawing ``schedules(TREE)`` with an empty property: the most
  ``hypothesis`` could reach with a free simulator (``1/hypothesis`` is about
  ``1/draw + 1/run+check``).

The target (issues 10 and 24) is 300 examples/s for ``hypothesis``. Each rate is also
given per CPU second of this process (``time.process_time()``): on a shared machine the
wall-clock rate follows the load, the CPU rate much less.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import (  # noqa: E402
    HealthCheck,
    given,
    settings,
    strategies as st,
)

from supervisor.testing import Schedule, check_all, run_schedule, schedules  # noqa: E402


def _example_tree() -> object:
    path = ROOT / "docs" / "examples" / "test_my_tree.py"
    spec = importlib.util.spec_from_file_location("_docs_example_tree", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TREE


def _rates(count: int, wall0: float, cpu0: float) -> tuple[float, float]:
    """Examples/s since ``wall0`` (``perf_counter``) and per CPU second since ``cpu0``."""
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return count / wall, count / max(cpu, 1e-9)


def with_hypothesis(tree: object, n: int) -> float:
    """Examples/s (wall clock) of the docs' property, Hypothesis drawing included."""
    return hypothesis_rates(tree, n)[0]


def hypothesis_rates(tree: object, n: int) -> tuple[float, float]:
    """:func:`with_hypothesis`'s examples/s, wall clock and per CPU second."""
    count = 0

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(schedules(tree))  # type: ignore[arg-type]
    def prop(schedule: Schedule) -> None:
        nonlocal count
        count += 1
        check_all(run_schedule(tree, schedule, max_agents=5))  # type: ignore[arg-type]

    t0, c0 = time.perf_counter(), time.process_time()
    prop()
    return _rates(count, t0, c0)


def run_and_check(tree: object, n: int) -> tuple[float, float]:
    drawn: list[Schedule] = []

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def draw(data: st.DataObject) -> None:
        drawn.append(data.draw(schedules(tree)))  # type: ignore[arg-type]

    draw()
    t0, c0 = time.perf_counter(), time.process_time()
    for schedule in drawn:
        check_all(run_schedule(tree, schedule, max_agents=5))  # type: ignore[arg-type]
    return _rates(len(drawn), t0, c0)


def draw_only(tree: object, n: int) -> tuple[float, float]:
    """Examples/s of Hypothesis drawing ``schedules(tree)`` for a property that does nothing."""
    count = 0

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(schedules(tree))  # type: ignore[arg-type]
    def prop(schedule: Schedule) -> None:
        nonlocal count
        count += 1

    t0, c0 = time.perf_counter(), time.process_time()
    prop()
    return _rates(count, t0, c0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    tree = _example_tree()
    rows: dict[str, list[tuple[float, float]]] = {"hypothesis": [], "run+check": [], "draw": []}
    for _ in range(args.repeat):
        rows["hypothesis"].append(hypothesis_rates(tree, args.examples))
        rows["run+check"].append(run_and_check(tree, args.examples))
        rows["draw"].append(draw_only(tree, args.examples))
    print(f"supervisor.testing on docs/examples/test_my_tree.py, {args.examples} examples")
    print(f"{'':12} {'median/s':>9} {'per CPU s':>10}   runs (wall; CPU)")
    for name, pairs in rows.items():
        wall, cpu = [w for w, _ in pairs], [c for _, c in pairs]
        runs = ", ".join(f"{v:.0f}" for v in wall) + "; " + ", ".join(f"{v:.0f}" for v in cpu)
        print(f"{name:12} {statistics.median(wall):9.0f} {statistics.median(cpu):10.0f}   {runs}")
    rate = statistics.median(w for w, _ in rows["hypothesis"])
    print(f"target: 300 examples/s (hypothesis): {rate / 300:.2f}x of it")
    if args.json:
        summary = {
            k: {
                "median": statistics.median(w for w, _ in v),
                "runs": [w for w, _ in v],
                "cpu_median": statistics.median(c for _, c in v),
                "cpu_runs": [c for _, c in v],
            }
            for k, v in rows.items()
        }
        args.json.write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
