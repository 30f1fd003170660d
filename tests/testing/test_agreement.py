"""The simulated backend agrees with real processes: same schedule, same event sequence.

Each schedule runs twice: on :func:`supervisor.testing.run_schedule` (virtual time) and
on real ``python -c`` children under the real clock. The real run applies each crash
once the tree has settled (every task blocked, every live child said ``ready``, nothing
backing off), which is what the simulated run does at each crash's virtual time, and
sends signals the child maps to the scheduled exit. Timings, ``running`` and output
events aside, the two sequences must be equal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

import pytest
import trio
import trio.testing

from strategies import FixedBackoff, Intensity, OneForAll, OneForOne, RestForOne
from supervisor import (
    ChildInfo,
    ChildOutput,
    ChildSpec,
    ChildStarting,
    ChildState,
    Event,
    Hub,
    SupervisorEscalation,
    SupervisorSpec,
)
from supervisor.testing import Crash, Exit, Kill, run_schedule

pytestmark = pytest.mark.slow

# SIGUSR1: exit 1, SIGUSR2: exit 0; SIGTERM keeps its default (killed by SIGTERM).
CHILD = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGUSR1, lambda *a: os._exit(1))\n"
    "signal.signal(signal.SIGUSR2, lambda *a: os._exit(0))\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    time.sleep(60)\n"
)
IGNORED = {"running", "output", "heartbeat", "status"}
TIMEOUT = 30.0


def worker(cid: str, **kw: Any) -> ChildSpec:
    return ChildSpec(
        id=cid,
        argv=[sys.executable, "-c", CHILD],
        notify=False,
        start_period=0.2,
        shutdown=5.0,
        **kw,
    )


def sup(name: str, children: list[Any], **kw: Any) -> SupervisorSpec:
    kw.setdefault("intensity", Intensity(3, 1000))
    return SupervisorSpec(name=name, children=children, **kw)


def shape(event: Event) -> tuple[object, ...]:
    """An event without its timings and pids."""
    extra: tuple[object, ...] = ()
    if event.kind == "exited":
        extra = (event.expected,)  # type: ignore[attr-defined]
    elif event.kind == "stopped":
        extra = (event.reason,)  # type: ignore[attr-defined]
    elif event.kind == "restarting":
        extra = (event.cause,)  # type: ignore[attr-defined]
    elif event.kind == "backing_off":
        extra = (event.restarting, event.attempt)  # type: ignore[attr-defined]
    return (event.kind, event.supervisor, event.child_id, *extra)


def simulated(spec: SupervisorSpec, crashes: list[Crash]) -> list[tuple[object, ...]]:
    trace = run_schedule(spec, crashes)
    return [shape(e) for e in trace.events if e.kind not in IGNORED]


def real(spec: SupervisorSpec, crashes: list[Crash]) -> list[tuple[object, ...]]:
    return trio.run(_real, spec, crashes)


async def _real(spec: SupervisorSpec, crashes: list[Crash]) -> list[tuple[object, ...]]:
    hub = Hub(spec)
    events = hub.bus.subscribe()
    seen: list[Event] = []
    ready: set[int] = set()
    current: dict[str, int] = {}
    exited: set[int] = set()
    changed = trio.Event()

    async def collect() -> None:
        nonlocal changed
        async for e in events:
            seen.append(e)
            if isinstance(e, ChildStarting):
                current[e.child_id] = e.pid
            elif isinstance(e, ChildOutput) and e.line == "ready" and e.child_id in current:
                ready.add(current[e.child_id])
            elif e.kind == "exited":
                exited.add(e.pid)  # type: ignore[attr-defined]
            changed.set()
            changed = trio.Event()

    def settled() -> bool:
        for row in hub.which_children():
            info: ChildInfo = row.info
            if info.state in (ChildState.BACKING_OFF, ChildState.STOPPING):
                return False
            if info.kind == "worker" and info.pid is not None and info.pid not in ready:
                return False
        return True

    async def wait_for(predicate: Any) -> None:
        with trio.fail_after(TIMEOUT):
            while True:
                # Let the supervisors handle what already happened before judging.
                await trio.testing.wait_all_tasks_blocked(0.02)
                if predicate():
                    return
                await changed.wait()

    async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with contextlib.suppress(SupervisorEscalation):  # "root gives up" ends here
            await hub.serve(task_status=task_status)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as outer:
        outer.start_soon(collect)
        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            for crash in crashes:
                await wait_for(settled)
                pid = current[crash.child_id]
                how = crash.how
                if isinstance(how, Exit):
                    assert how.code in (0, 1)
                    os.kill(pid, signal.SIGUSR1 if how.code else signal.SIGUSR2)
                else:
                    assert isinstance(how, Kill)
                    os.kill(pid, how.signal)
                await wait_for(lambda pid=pid: pid in exited)
            await wait_for(settled)
            await hub.stop()
        hub.bus.close()
    return [shape(e) for e in seen if e.kind not in IGNORED]


SCENARIOS = {
    "one-for-one": (
        sup("root", [worker("a"), worker("b")], strategy=OneForOne()),
        [Crash(1, "a"), Crash(2, "b", Kill(signal.SIGKILL)), Crash(3, "a", Exit(1))],
    ),
    "rest-for-one, restart types": (
        sup(
            "root",
            [worker("a"), worker("b", restart="transient"), worker("c", restart="temporary")],
            strategy=RestForOne(),
        ),
        [Crash(1, "b", Exit(0)), Crash(2, "a", Kill(signal.SIGSEGV))],
    ),
    "nested one-for-all with backoff": (
        sup(
            "root",
            [worker("a"), sup("inner", [worker("x"), worker("y")], strategy=OneForAll())],
            backoff=FixedBackoff(0.25),
        ),
        [Crash(1, "x"), Crash(2, "a"), Crash(3, "y", Kill(signal.SIGTERM))],
    ),
    "nested escalation": (
        sup(
            "root",
            [sup("inner", [worker("x")], intensity=Intensity(0, 1000)), worker("b")],
            strategy=RestForOne(),
        ),
        [Crash(1, "x"), Crash(2, "x")],
    ),
    "root gives up": (
        sup("root", [worker("a")], intensity=Intensity(1, 1000)),
        [Crash(1, "a"), Crash(2, "a")],
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_simulated_and_real_runs_agree(name: str) -> None:
    """The same schedule gives the same event sequence on simulated and real processes."""
    spec, crashes = SCENARIOS[name]

    expected = simulated(spec, crashes)
    actual = real(spec, crashes)

    assert expected == actual
    assert any(kind == "restarting" for kind, *_ in expected)
