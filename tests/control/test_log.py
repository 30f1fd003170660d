"""The hub's log: one readable line per event, at a level that says whether it is trouble."""

from __future__ import annotations

import json
import logging
import re
import signal
from datetime import datetime

import pytest
import trio
import trio.testing

from supervisor._events import (
    ChildBackingOff,
    ChildExited,
    ChildHung,
    ChildOutput,
    ChildRestarting,
    ChildRunning,
    ChildSpawnFailed,
    ChildStarting,
    ChildStopped,
    Event,
    ExitStatus,
    SupervisorEscalated,
    SupervisorStarted,
    SupervisorStopped,
    SupervisorStopping,
)
from supervisor._log import (
    LIFECYCLE_KINDS,
    MAX_LOG_ERROR,
    SUMMARY_EVERY,
    WORK_LOG_KINDS,
    JsonFormatter,
    TextFormatter,
    _fields,
    event_level,
    format_event,
    log_events,
    log_kinds,
)
from supervisor.work import (
    WorkAssigned,
    WorkCancelled,
    WorkCompleted,
    WorkDeadLettered,
    WorkFailed,
    WorkReclaimed,
    WorkRefused,
    WorkSubmitted,
    WorkTimedOut,
)

WHERE = {"at": 1.0, "supervisor": "hub/pool", "child_id": "w-agent-2"}
SIGKILL = ExitStatus(signal=signal.SIGKILL)


def exited(status: ExitStatus, expected: bool = False, failed_start: bool = False) -> ChildExited:
    return ChildExited(
        **WHERE, pid=7, status=status, expected=expected, failed_start=failed_start, uptime=2.25
    )


LINES: list[tuple[Event, str, int]] = [
    (
        ChildStarting(**WHERE, pid=7, incarnation=3),
        "hub/pool/w-agent-2 starting (pid 7, start #3)",
        logging.INFO,
    ),
    (ChildRunning(**WHERE, pid=7), "hub/pool/w-agent-2 running (pid 7)", logging.INFO),
    (
        ChildSpawnFailed(**WHERE, error="no such file: 'agent'"),
        "hub/pool/w-agent-2 failed to start: no such file: 'agent'",
        logging.WARNING,
    ),
    (
        exited(ExitStatus(code=0), expected=True),
        "hub/pool/w-agent-2 ended: exited with code 0 after 2.2s",
        logging.INFO,
    ),
    (
        exited(ExitStatus(code=0)),
        "hub/pool/w-agent-2 exited: exited with code 0 after 2.2s",
        logging.INFO,
    ),
    (
        exited(ExitStatus(code=3)),
        "hub/pool/w-agent-2 crashed: exited with code 3 after 2.2s",
        logging.WARNING,
    ),
    (
        exited(SIGKILL, failed_start=True),
        "hub/pool/w-agent-2 failed to start: killed by SIGKILL after 2.2s",
        logging.WARNING,
    ),
    (
        exited(SIGKILL, expected=True),
        "hub/pool/w-agent-2 ended: killed by SIGKILL after 2.2s",
        logging.INFO,
    ),
    (
        ChildBackingOff(**WHERE, delay=0.5, attempt=2, restarting=("a", "b")),
        "hub/pool/w-agent-2 backing off 0.50s (attempt 2) before restarting a, b",
        logging.INFO,
    ),
    (
        ChildRestarting(**WHERE, cause="w-agent-2"),
        "hub/pool/w-agent-2 restarting",
        logging.INFO,
    ),
    (
        ChildRestarting(**WHERE, cause="w-agent-1"),
        "hub/pool/w-agent-2 restarting because w-agent-1 failed",
        logging.INFO,
    ),
    (
        ChildStopped(**WHERE, reason="terminated"),
        "hub/pool/w-agent-2 stopped (terminated)",
        logging.INFO,
    ),
    (
        ChildHung(**WHERE, pid=7, silence=12.34),
        "hub/pool/w-agent-2 HUNG: no heartbeat for 12.3s (pid 7); killing it",
        logging.WARNING,
    ),
    (SupervisorStarted(**WHERE), "hub/pool started", logging.INFO),
    (SupervisorStopping(**WHERE), "hub/pool stopping", logging.INFO),
    (SupervisorStopped(**WHERE), "hub/pool stopped", logging.INFO),
    (
        SupervisorEscalated(**WHERE, limit="3 restarts in 5s", reason="exited with code 1"),
        "hub/pool GAVE UP: w-agent-2 (exited with code 1) exceeded 3 restarts in 5s",
        logging.WARNING,
    ),
    (
        ChildOutput(**WHERE, stream="stdout", line="hello"),
        "hub/pool/w-agent-2 | hello",
        logging.INFO,
    ),
    (
        ChildOutput(**WHERE, stream="stderr", line="oops"),
        "hub/pool/w-agent-2 ! oops",
        logging.INFO,
    ),
    (
        WorkSubmitted(**WHERE, item_id="w-1", agent_type="w"),
        "work w-1 submitted for w",
        logging.INFO,
    ),
    (
        WorkAssigned(**WHERE, item_id="w-1", attempt=1),
        "work w-1 assigned to w-agent-2 (attempt 1)",
        logging.INFO,
    ),
    (
        WorkCompleted(**WHERE, item_id="w-1", attempt=2),
        "work w-1 completed by w-agent-2 (attempt 2)",
        logging.INFO,  # after a failure or a reclaim: worth a line
    ),
    (
        WorkCompleted(**WHERE, item_id="w-1", attempt=1),
        "work w-1 completed by w-agent-2 (attempt 1)",
        logging.DEBUG,  # summed up every SUMMARY_EVERY seconds instead
    ),
    (
        WorkFailed(**WHERE, item_id="w-1", attempt=1, error="boom", final=False),
        "work w-1 failed on w-agent-2 (attempt 1): boom ; it will be retried",
        logging.INFO,
    ),
    (
        WorkFailed(**WHERE, item_id="w-1", attempt=3, error="boom", final=True),
        "work w-1 failed on w-agent-2 (attempt 3): boom for good",
        logging.INFO,
    ),
    (
        WorkReclaimed(**WHERE, item_id="w-1", attempt=1, reason="hang"),
        "work w-1 reclaimed from w-agent-2 (attempt 1): its agent hung; queued again",
        logging.WARNING,
    ),
    (
        WorkReclaimed(**WHERE, item_id="w-1", attempt=1, reason="handback"),
        "work w-1 reclaimed from w-agent-2 (attempt 1): its agent handed it back; queued again",
        logging.WARNING,
    ),
    (
        WorkReclaimed(**WHERE, item_id="w-1", attempt=1, reason="lease lost"),
        "work w-1 reclaimed from w-agent-2 (attempt 1): lease lost; queued again",
        logging.WARNING,
    ),
    (
        WorkDeadLettered(**WHERE, item_id="w-1", attempt=3, reason="exit"),
        "work w-1 DEAD after attempt 3: exit (hubvisor work retry w-1)",
        logging.WARNING,
    ),
    (
        WorkRefused(**WHERE, item_id="w-1", attempt=1, reason="stale attempt"),
        "work w-1: refused an answer from w-agent-2 (attempt 1): stale attempt",
        logging.INFO,
    ),
    (
        WorkRefused(**WHERE, item_id="w-1", attempt=1, reason="stale attempt", repeats=350),
        "work w-1: refused an answer from w-agent-2 (attempt 1): stale attempt "
        "(350 refusals since the last line)",
        logging.INFO,
    ),
    (
        WorkCancelled(**WHERE, item_id="w-1", attempt=2, reason="not needed"),
        "work w-1 cancelled (held by w-agent-2, attempt 2): not needed",
        logging.INFO,
    ),
    (
        WorkTimedOut(**WHERE, item_id="w-1", attempt=1, time_limit=30.0, final=False),
        "work w-1 timed out on w-agent-2 (attempt 1, time limit 30s); it will be retried",
        logging.WARNING,
    ),
]


class TestFormat:
    @pytest.mark.parametrize(
        ("event", "line", "level"),
        LINES,
        ids=[f"{e.kind}-{i}" for i, (e, _, _) in enumerate(LINES)],
    )
    def test_each_event_is_one_line_at_its_level(self, event: Event, line: str, level: int) -> None:
        """Every event kind reads as one line naming the child (or item) and what
        happened; failures (crashes, failed starts, hangs, escalations, lost work) are
        warnings, the rest info."""
        assert (line, level) == (format_event(event), event_level(event))

    def test_every_kind_the_log_shows_is_checked_here(self) -> None:
        """Every kind the log shows has its line checked above."""
        shown = {e.kind for e, _, _ in LINES}

        assert log_kinds(output=True) <= shown


class TestKinds:
    def test_output_lines_only_when_asked(self) -> None:
        """The log shows lifecycle and work outcomes; child output only with --output."""
        assert LIFECYCLE_KINDS | WORK_LOG_KINDS == log_kinds()
        assert log_kinds() | {"output"} == log_kinds(output=True)
        assert not {"work_submitted", "work_assigned", "heartbeat"} & log_kinds(True)


async def test_log_events_logs_each_event_until_the_channel_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """log_events writes one record per event, at the event's level, and returns when
    the channel closes."""
    send, receive = trio.open_memory_channel[Event](10)
    crash = exited(ExitStatus(code=3))
    started = ChildRunning(**WHERE, pid=7)
    caplog.set_level(logging.DEBUG, logger="hubvisor")
    async with send:
        send.send_nowait(started)
        send.send_nowait(crash)

    with trio.fail_after(5):
        await log_events(receive)

    assert [
        (logging.INFO, "hub/pool/w-agent-2 running (pid 7)"),
        (logging.WARNING, "hub/pool/w-agent-2 crashed: exited with code 3 after 2.2s"),
    ] == [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "hubvisor"]


async def test_completed_items_are_summed_up_every_interval(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    """A completed item is a DEBUG line; every SUMMARY_EVERY seconds one INFO line says
    how many completed and failed, only when any did, and once more for the rest when
    the channel ends."""
    send, receive = trio.open_memory_channel[Event](100)
    caplog.set_level(logging.DEBUG, logger="hubvisor")

    async def feed() -> None:
        async with send:
            for n in range(5):
                await send.send(WorkCompleted(**WHERE, item_id=f"w-{n}", attempt=1))
            await send.send(WorkFailed(**WHERE, item_id="w-9", attempt=1, error="x", final=False))
            await trio.sleep(SUMMARY_EVERY * 3.5)  # two quiet intervals: no line
            await send.send(WorkCompleted(**WHERE, item_id="w-7", attempt=1))
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        await log_events(receive)

    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debugs = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert [
        "work w-9 failed on w-agent-2 (attempt 1): x ; it will be retried",
        "work: 5 completed, 1 failed in the last 10 s",
        "work: 1 completed, 0 failed in the last 6 s",
    ] == infos
    assert 6 == len(debugs) and all(" completed by w-agent-2 " in d for d in debugs)


def test_json_lines_say_time_level_event_agent_item_and_message() -> None:
    """A JSON line per record: ISO 8601 time with its zone; the event's kind, agent and
    item when it is about one (null otherwise)."""
    done = WorkCompleted(**WHERE, item_id="w-1", attempt=2)
    record = logging.LogRecord("hubvisor", logging.DEBUG, __file__, 1, "%s", ("hi",), None)
    for key, value in _fields(done).items():
        setattr(record, key, value)
    plain = logging.LogRecord("hubvisor", logging.WARNING, __file__, 1, "a %s", ("b",), None)

    line = json.loads(JsonFormatter().format(record))
    other = json.loads(JsonFormatter().format(plain))

    assert datetime.fromisoformat(line["time"]).tzinfo is not None
    assert {
        "level": "debug",
        "event": "work_completed",
        "supervisor": "hub/pool",
        "agent": "w-agent-2",
        "item": "w-1",
        "message": "hi",
    }.items() <= line.items()
    assert ("warning", None, None, None, "a b") == (
        other["level"],
        other["event"],
        other["agent"],
        other["item"],
        other["message"],
    )
    text = TextFormatter().format(plain)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d WARNING a b", text)


def test_a_long_error_is_cut_in_the_log_line() -> None:
    """A dead or failed item's error shows at most MAX_LOG_ERROR characters, then "…"."""
    dead = WorkDeadLettered(**WHERE, item_id="w-1", attempt=3, reason="e" * 5000)
    failed = WorkFailed(**WHERE, item_id="w-1", attempt=1, error="e" * 5000, final=True)

    for event in (dead, failed):
        line = format_event(event)
        assert "e" * MAX_LOG_ERROR + "…" in line and "e" * (MAX_LOG_ERROR + 1) not in line
