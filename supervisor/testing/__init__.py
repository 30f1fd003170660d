"""Deterministic property testing of supervision trees.

* :class:`SimulatedProcessBackend`: fake processes on the trio clock, injected into the
  real runtime (the strategies, backoff, intensity and event code are the production
  ones).
* :func:`run_schedule`: run a spec against a crash :class:`Schedule` under
  ``MockClock(autojump_threshold=0)`` and get the ordered :class:`Trace`.
* Hypothesis strategies: :func:`supervision_specs`, :func:`schedules`,
  :func:`specs_and_schedules`...
* Invariant checks on a trace: :func:`check_all` and the single checks it runs.
* Work: simulated agents that take work (:class:`SimWork`), :class:`Submit` in a
  schedule, :func:`specs_and_work_schedules`, and the work checks (:func:`check_work`).

This package needs Hypothesis (``pip install hubvisor[test]``); ``import supervisor``
does not. See ``docs/property-testing.md``.
"""

from __future__ import annotations

import contextlib

from ._errors import InvalidSchedule as InvalidSchedule
from ._invariants import InvariantViolation as InvariantViolation
from ._invariants_tree import (
    STRATEGY_ORACLES as STRATEGY_ORACLES,
    StrategyOracle as StrategyOracle,
    check_all as check_all,
    check_backoff as check_backoff,
    check_hangs as check_hangs,
    check_intensity as check_intensity,
    check_live_limits as check_live_limits,
    check_registry as check_registry,
    check_restart_types as check_restart_types,
    check_shutdown as check_shutdown,
    check_siblings as check_siblings,
)
from ._invariants_work import (
    check_work as check_work,
    check_work_completions as check_work_completions,
    check_work_deliveries as check_work_deliveries,
    check_work_dependencies as check_work_dependencies,
    check_work_holders as check_work_holders,
    check_work_keys as check_work_keys,
    check_work_order as check_work_order,
    check_work_outcomes as check_work_outcomes,
    check_work_reclaim as check_work_reclaim,
    check_work_time_limits as check_work_time_limits,
)
from ._run import (
    BackoffChosen as BackoffChosen,
    CrashApplied as CrashApplied,
    IntensityRecorded as IntensityRecorded,
    ItemState as ItemState,
    Record as Record,
    Snapshot as Snapshot,
    StrategyChosen as StrategyChosen,
    SubmitApplied as SubmitApplied,
    SubmitRefused as SubmitRefused,
    Trace as Trace,
    WorkSnapshot as WorkSnapshot,
    run_schedule as run_schedule,
)
from ._schedule import (
    Crash as Crash,
    Exit as Exit,
    Hang as Hang,
    How as How,
    Kill as Kill,
    Schedule as Schedule,
    Submit as Submit,
)
from ._sim import (
    SimBehaviour as SimBehaviour,
    SimulatedNotify as SimulatedNotify,
    SimulatedProcess as SimulatedProcess,
    SimulatedProcessBackend as SimulatedProcessBackend,
    SimWork as SimWork,
    WireRecord as WireRecord,
    sim_result as sim_result,
)
from ._strategies import (
    agent_specs as agent_specs,
    agent_types as agent_types,
    backoff_policies as backoff_policies,
    crash_schedules as crash_schedules,
    crashes as crashes,
    intensities as intensities,
    restart_strategies as restart_strategies,
    schedules as schedules,
    specs_and_schedules as specs_and_schedules,
    specs_and_work_schedules as specs_and_work_schedules,
    submissions as submissions,
    supervision_specs as supervision_specs,
    work_payloads as work_payloads,
    work_schedules as work_schedules,
    worker_ids as worker_ids,
)

__all__ = [
    "STRATEGY_ORACLES",
    "BackoffChosen",
    "Crash",
    "CrashApplied",
    "Exit",
    "Hang",
    "How",
    "IntensityRecorded",
    "InvalidSchedule",
    "InvariantViolation",
    "ItemState",
    "Kill",
    "Record",
    "Schedule",
    "SimBehaviour",
    "SimWork",
    "SimulatedNotify",
    "SimulatedProcess",
    "SimulatedProcessBackend",
    "Snapshot",
    "StrategyChosen",
    "StrategyOracle",
    "Submit",
    "SubmitApplied",
    "SubmitRefused",
    "Trace",
    "WireRecord",
    "WorkSnapshot",
    "agent_specs",
    "agent_types",
    "backoff_policies",
    "check_all",
    "check_backoff",
    "check_hangs",
    "check_intensity",
    "check_live_limits",
    "check_registry",
    "check_restart_types",
    "check_shutdown",
    "check_siblings",
    "check_work",
    "check_work_completions",
    "check_work_deliveries",
    "check_work_dependencies",
    "check_work_holders",
    "check_work_keys",
    "check_work_order",
    "check_work_outcomes",
    "check_work_reclaim",
    "check_work_time_limits",
    "crash_schedules",
    "crashes",
    "intensities",
    "restart_strategies",
    "run_schedule",
    "schedules",
    "sim_result",
    "specs_and_schedules",
    "specs_and_work_schedules",
    "submissions",
    "supervision_specs",
    "work_payloads",
    "work_schedules",
    "worker_ids",
]


def _fixup_module_metadata() -> None:
    # Show `supervisor.testing.Crash`, not `supervisor.testing._schedule.Crash`.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("supervisor.testing._"):
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = __name__


_fixup_module_metadata()
