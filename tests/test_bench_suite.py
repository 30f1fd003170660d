"""The benchmark suite runs end to end (``--quick``) and reports in the documented shape.

It checks that the suite runs, not its timings: speed goals live in the benchmarks.
The peers (supervisord, circus) are optional: asked for without their virtual
environment and with ``--no-install``, they are skipped with a note and nothing is
installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "suite.py"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the suite observes children through /proc"
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, object]]:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HUBVISOR_PEER_VENV": str(out / "no-peer-venv")}
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--quick", "--no-install", "-n", "8", "--kills", "3",
         "--systems", "floor,minimal,hubvisor,supervisord", "--out", str(out),
         "--no-extra-targets"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )  # fmt: skip
    assert 0 == proc.returncode, proc.stdout + proc.stderr
    assert not (out / "no-peer-venv").exists()
    return proc.stdout, json.loads((out / "results.json").read_text())


class TestQuickRun:
    def test_peers_skipped_with_a_note(self, quick_run: tuple[str, dict[str, object]]) -> None:
        """Without the peers' venv and with --no-install, the peers are skipped and said so."""
        stdout, results = quick_run

        assert "note: skipping supervisord" in stdout
        assert "no chart" in stdout
        assert "supervisord" not in results["summary"]["8"]  # type: ignore[index]

    def test_table_has_every_system_and_metric(
        self, quick_run: tuple[str, dict[str, object]]
    ) -> None:
        """The printed table has a header with every metric and a row per system run."""
        stdout, _ = quick_run
        tables = stdout[: stdout.index("targets (issue 24)")]
        lines = [line for line in tables.splitlines() if line.startswith("|")]

        assert lines[0].startswith("| N = 8 | start all (s) | first child (s) | restart p50")
        assert "stop: exited (s)" in lines[0]
        assert ["floor", "minimal", "hubvisor"] == [line.split()[1] for line in lines[2:]]
        assert all(line.count("|") == lines[0].count("|") for line in lines)

    def test_json_is_well_formed(self, quick_run: tuple[str, dict[str, object]]) -> None:
        """results.json holds the meta data, one raw run per system and the summary with
        ratios to the minimal daemon."""
        _, results = quick_run
        meta, summary, raw = results["meta"], results["summary"], results["raw"]  # type: ignore[index]

        assert {"date", "machine", "command", "rounds", "kills"} <= set(meta)
        assert [] == meta["failures"]
        assert {"floor", "minimal", "hubvisor"} == set(summary["8"])
        hub = summary["8"]["hubvisor"]
        for metric in ("start", "first", "restart_p50", "restart_p99", "idle_cpu", "rss"):
            assert hub[metric]["min"] <= hub[metric]["median"] <= hub[metric]["max"]
        assert hub["start"]["ratio"] > 0
        assert 3 == len(raw["8"]["hubvisor"][0]["restarts"])
        assert summary["8"]["floor"].get("rss") is None  # no daemon: no RSS to report

    def test_targets_reported_met_or_missed(self, quick_run: tuple[str, dict[str, object]]) -> None:
        """Every issue-24 target is in the JSON and the printed report: the daemon ones
        at each N with a ratio (or MiB) and a verdict, the RSS one with the import cost
        and per-child cost beside it, the other benchmarks' ones skipped as asked."""
        stdout, results = quick_run
        rows: list[dict[str, Any]] = results["targets"]  # type: ignore[assignment]
        by_key = {(r["key"], r["n"]): r for r in rows}

        for key in ("start", "restart_p50", "restart_p99", "dead", "exited", "rss"):
            row = by_key[(key, "8")]
            assert row["verdict"] in ("met", "missed"), row
            assert row["value"] > 0 and row["bound"] > 0
            assert row["verdict"] == "met" if row["value"] <= row["bound"] else "missed"
        assert "import " in by_key[("rss", "8")]["note"]
        assert "per child" in by_key[("rss", "8")]["note"]
        assert 1 == len(results["import_rss"])  # type: ignore[arg-type]
        for key in ("heartbeat_cpu", "registry", "testing", "work_redis"):
            assert "skipped" == by_key[(key, None)]["verdict"]
        report = stdout[stdout.index("targets (issue 24)") :].splitlines()
        table = [line for line in report if line.startswith("| ")]
        assert table[0] == "| target | N | measured | bound | verdict | note |"
        assert len(rows) == len(table) - 1
