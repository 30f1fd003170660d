"""The trace helpers for users' own properties (issue 22), and the page's example
("10 failures never take the hub down") run as written and shown verbatim."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import Phase, given, settings

from strategies import Intensity
from supervisor import ChildSpec, SupervisorSpec, UnknownEventKind
from supervisor.testing import Crash, Exit, Schedule, run_schedule, schedules

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "property-testing.md"
EXAMPLE = ROOT / "docs" / "examples" / "test_my_properties.py"


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_example_my_properties", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_shows_the_example_verbatim_and_it_passes() -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert EXAMPLE.read_text() in blocks
    example().test_ten_failures_never_take_the_hub_down()


def test_the_property_fails_for_a_tree_that_gives_up_after_3_restarts() -> None:
    """The example's property has teeth: Hypothesis finds a schedule that takes a
    stricter tree down."""
    strict = SupervisorSpec(
        name="hub",
        intensity=Intensity(max_restarts=3, window=60),
        children=[ChildSpec(id="planner", argv=["planner"])],
    )

    @settings(max_examples=50, database=None, phases=[Phase.generate])
    @given(schedules(strict, max_crashes=10))
    def survives(schedule: Schedule) -> None:
        trace = run_schedule(strict, schedule)
        assert trace.hub_survived and trace.never_escalated

    with pytest.raises(AssertionError):
        survives()


def test_select_and_count_filter_by_kind_child_and_fields() -> None:
    tree = SupervisorSpec(
        name="hub",
        intensity=Intensity(max_restarts=2, window=60),
        children=[ChildSpec(id="a", argv=["a"]), ChildSpec(id="b", argv=["b"])],
    )
    trace = run_schedule(
        tree,
        [
            Crash(at=1.0, child_id="a"),
            Crash(at=2.0, child_id="a", how=Exit(0)),
            Crash(at=3.0, child_id="b"),  # the third restart in 60 s: the hub gives up
        ],
    )

    assert 2 == trace.count("restarting", "a")
    assert 3 == len(trace.crashes_applied)
    codes = [e.status.code for e in trace.select("exited", "a", expected=False)]  # type: ignore[attr-defined]
    assert [1, 0] == codes
    assert 2 == trace.count("exited", "a", expected=False)
    assert trace.count(child_id="b") >= 2  # started, exited...
    assert 0 == trace.count("exited", "a", no_such_field=1)
    assert not trace.hub_survived and not trace.never_escalated
    assert 1 == trace.count("escalated")
    assert trace.snapshots and all(s.kind == "snapshot" for s in trace.snapshots)
    with pytest.raises(UnknownEventKind, match=r"no event has kind 'restart'; the kinds are"):
        trace.count("restart")
