"""The runtime with real OS processes: strategies, restart types, escalation, stopping."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from strategies import Intensity, OneForAll, OneForOne, RestForOne
from supervisor import (
    BRUTAL_KILL,
    ChildExited,
    ChildNotFound,
    ChildSpawnFailed,
    ChildState,
    ControlError,
    Event,
    Hub,
    MaxAgentsExceeded,
    PoolSpec,
    SupervisorEscalation,
    SupervisorSpec,
)
from tests.helpers import (
    alive,
    drain,
    group_members,
    is_,
    python_child,
    running,
    sleeper,
    until,
    wait_all,
    wait_event,
)


def pids(hub: Hub) -> dict[str, int | None]:
    return {row.info.id: row.info.pid for row in hub.which_children()}


class TestStrategies:
    async def test_one_for_one(self) -> None:
        """Killing b restarts only b."""
        spec = SupervisorSpec(
            name="root", strategy=OneForOne(), children=[sleeper("a"), sleeper("b"), sleeper("c")]
        )
        async with running(spec) as (hub, events):
            before = pids(hub)
            os.kill(before["b"], signal.SIGKILL)  # type: ignore[arg-type]
            await wait_event(events, is_("starting", "b", incarnation=2))
            after = pids(hub)

            assert before["a"] == after["a"] and before["c"] == after["c"]
            assert before["b"] != after["b"]
            assert not alive(before["b"])  # type: ignore[arg-type]

    async def test_one_for_all_stops_in_reverse_and_starts_in_order(self) -> None:
        """Killing b stops c then a, and starts a, b, c again."""
        spec = SupervisorSpec(
            name="root", strategy=OneForAll(), children=[sleeper("a"), sleeper("b"), sleeper("c")]
        )
        async with running(spec) as (hub, events):
            before = pids(hub)
            drain(events)
            os.kill(before["b"], signal.SIGKILL)  # type: ignore[arg-type]
            seen: list[Event] = []
            await wait_event(events, is_("starting", "c", incarnation=2), seen)
            after = pids(hub)

            assert all(before[k] != after[k] for k in "abc")
            stopped = [e.child_id for e in seen if e.kind == "stopped"]
            started = [e.child_id for e in seen if e.kind == "starting"]
            assert ["c", "a"] == stopped
            assert ["a", "b", "c"] == started
            assert not any(alive(p) for p in before.values() if p)

    async def test_rest_for_one(self) -> None:
        """Killing b restarts b and c, not a."""
        spec = SupervisorSpec(
            name="root", strategy=RestForOne(), children=[sleeper("a"), sleeper("b"), sleeper("c")]
        )
        async with running(spec) as (hub, events):
            before = pids(hub)
            os.kill(before["b"], signal.SIGKILL)  # type: ignore[arg-type]
            await wait_event(events, is_("starting", "c", incarnation=2))
            after = pids(hub)

            assert before["a"] == after["a"]
            assert before["b"] != after["b"] and before["c"] != after["c"]


class TestRestartTypes:
    async def test_transient_normal_exit_is_not_restarted(self, tmp_path: Path) -> None:
        """A transient child that exits 0 stays stopped; one that exits 1 restarts."""
        flag = tmp_path / "crashed-once"
        once = (
            f"import pathlib, sys, time; p = pathlib.Path({str(flag)!r})\n"
            "if not p.exists(): p.touch(); sys.exit(1)\n"
            "time.sleep(1000)"
        )
        spec = SupervisorSpec(
            name="root",
            intensity=Intensity(10, 60),
            children=[
                python_child("ok", "pass", restart="transient"),
                python_child("bad", once, restart="transient"),
            ],
        )
        async with running(spec) as (hub, events):
            seen: list[Event] = []
            await wait_all(
                events,
                is_("stopped", "ok", reason="exited"),
                is_("starting", "bad", incarnation=2),
                seen=seen,
            )
            states = {r.info.id: r.info for r in hub.which_children()}

            assert ChildState.STOPPED == states["ok"].state
            assert "exited with code 0" == states["ok"].last_exit
            assert not any(is_("restarting", "ok")(e) for e in seen)

    async def test_temporary_is_removed(self) -> None:
        """A temporary child is never restarted and leaves the supervisor."""
        spec = SupervisorSpec(
            name="root",
            children=[
                sleeper("keep"),
                python_child("once", "raise SystemExit(3)", restart="temporary"),
            ],
        )
        async with running(spec) as (hub, events):
            await wait_event(events, is_("stopped", "once", reason="exited"))

            assert ["keep"] == [r.info.id for r in hub.which_children()]
            assert {
                "specs": 1,
                "active": 1,
                "workers": 1,
                "supervisors": 0,
            } == hub.root.count_children()

    async def test_temporary_sibling_not_restarted_by_one_for_all(self) -> None:
        """OTP: a temporary child is not restarted even when a sibling's failure stops it."""
        spec = SupervisorSpec(
            name="root",
            strategy=OneForAll(),
            children=[sleeper("tmp", restart="temporary"), sleeper("b")],
        )
        async with running(spec) as (hub, events):
            os.kill(pids(hub)["b"], signal.SIGKILL)  # type: ignore[arg-type]
            await wait_event(events, is_("starting", "b", incarnation=2))

            assert ["b"] == [r.info.id for r in hub.which_children()]


class TestEscalation:
    async def test_nested_escalation_reaches_the_root(self) -> None:
        """A crash-looping child exhausts its supervisor, then the root; the hub fails."""
        spec = SupervisorSpec(
            name="root",
            intensity=Intensity(1, 60),
            children=[
                sleeper("bystander"),
                SupervisorSpec(
                    name="mid",
                    intensity=Intensity(1, 60),
                    children=[python_child("looper", "raise SystemExit(3)")],
                ),
            ],
        )
        hub = Hub(spec)
        events = hub.bus.subscribe()
        with trio.fail_after(60), pytest.raises(SupervisorEscalation) as info:
            await hub.serve()
        hub.bus.close()
        seen = [e async for e in events]
        escalations = [(e.supervisor, e.child_id) for e in seen if e.kind == "escalated"]

        assert [("root/mid", "looper"), ("root/mid", "looper"), ("root", "mid")] == escalations
        assert "root" == info.value.supervisor and "mid" == info.value.child_id
        assert "1 restarts in 60s" in str(info.value)
        # The bystander was stopped before the root gave up.
        assert any(is_("stopped", "bystander", reason="shutdown")(e) for e in seen)
        assert seen[-1].kind == "supervisor_stopped"


class TestStopping:
    async def test_group_kill_reaches_grandchildren(self) -> None:
        """Stopping a child kills the grandchildren in its process group."""
        code = "sleep 1000 & sleep 1000 & echo up; wait"
        spec = SupervisorSpec(
            name="root",
            children=[sleeper("sh", argv=["sh", "-c", code])],  # type: ignore[list-item]
        )
        async with running(spec) as (hub, events):
            await wait_event(events, is_("output", "sh", line="up"))
            leader = pids(hub)["sh"]
            assert leader is not None
            await until(lambda: len(group_members(leader)) == 3)
            members = group_members(leader)
            await hub.terminate_child("sh")

            assert not any(alive(p) for p in members)

    async def test_leftover_grandchildren_die_with_their_leader(self) -> None:
        """When a child exits on its own, what it left in its group is killed too."""
        spec = SupervisorSpec(
            name="root",
            children=[
                sleeper(
                    "sh", argv=["sh", "-c", "sleep 1000 & echo $!; exit 3"], restart="temporary"
                )
            ],
        )
        async with running(spec) as (hub, events):
            line = await wait_event(events, is_("output", "sh"))
            grandchild = int(line.line)  # type: ignore[attr-defined]
            await wait_event(events, is_("exited", "sh"))

            await until(lambda: not alive(grandchild))

    async def test_graceful_then_forced(self) -> None:
        """A child ignoring SIGTERM is SIGKILLed after its shutdown; a polite one is not."""
        stubborn = (
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(1000)"
        )
        polite = (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
            "print('ready', flush=True)\n"
            "time.sleep(1000)"
        )
        spec = SupervisorSpec(
            name="root",
            children=[
                python_child("stubborn", stubborn, shutdown=0.5),
                python_child("polite", polite, shutdown=30),
                sleeper("brutal", shutdown=BRUTAL_KILL),
            ],
        )
        async with running(spec) as (hub, events):
            await wait_all(
                events,
                is_("output", "stubborn", line="ready"),
                is_("output", "polite", line="ready"),
            )
            seen: list[Event] = []
            await hub.stop()
            async for e in events:
                seen.append(e)
                if e.kind == "supervisor_stopped":
                    break
        exits = {e.child_id: e for e in seen if isinstance(e, ChildExited)}

        assert signal.SIGKILL == exits["stubborn"].status.signal
        assert 0 == exits["polite"].status.code
        assert signal.SIGKILL == exits["brutal"].status.signal
        assert all(e.expected for e in exits.values())
        warning = [e for e in seen if e.kind == "output" and "ignored SIGTERM" in e.line]  # type: ignore[attr-defined]
        assert warning and "raise ChildSpec.shutdown" in warning[0].line  # type: ignore[attr-defined]
        # Reverse start order: brutal, polite, stubborn.
        assert ["brutal", "polite", "stubborn"] == [e.child_id for e in seen if e.kind == "stopped"]

    async def test_pool_members_stop_concurrently(self) -> None:
        """A pool of children that ignore SIGTERM stops in about one shutdown timeout."""
        template = sleeper("t", argv=["sh", "-c", "trap '' TERM; exec sleep 1000"], shutdown=1.0)
        pool = PoolSpec(agent_type="w", template=template, size=30, max_size=30)
        async with running([pool]) as (hub, events):
            await until(
                lambda: all(r.info.pid for r in hub.which_children() if r.info.kind == "worker")
            )
            t0 = trio.current_time()
            await hub.stop()
            took = trio.current_time() - t0

        # Sequential stopping would take 30 s; concurrent takes ~1 s (+ noise).
        assert took < 10, took


class TestFailuresToStart:
    async def test_missing_executable_is_a_clear_failed_start(self) -> None:
        """A missing program is reported with its name and the fix; siblings keep running."""
        spec = SupervisorSpec(
            name="root",
            intensity=Intensity(2, 60),
            children=[sleeper("fine"), sleeper("ghost", argv=["no-such-program-xyz", "--flag"])],
        )
        hub = Hub(spec)
        events = hub.bus.subscribe()
        with trio.fail_after(30), pytest.raises(SupervisorEscalation) as info:
            await hub.serve()
        hub.bus.close()
        seen = [e async for e in events]
        failures = [e for e in seen if isinstance(e, ChildSpawnFailed)]

        assert 3 == len(failures)
        assert "executable 'no-such-program-xyz' not found on PATH" in failures[0].error
        assert "failed to spawn" in info.value.reason
        assert "no-such-program-xyz" in str(info.value)

    @pytest.mark.parametrize(
        ("kwargs", "fragment"),
        [
            ({"argv": ["/nonexistent/prog"]}, "does not exist"),
            ({"argv": ["NONEXEC"]}, "not an executable file"),
            ({"argv": ["sleep", "1"], "cwd": "/nonexistent-dir"}, "is not a directory"),
        ],
    )
    async def test_spawn_errors_name_the_fix(
        self, kwargs: dict[str, object], fragment: str, tmp_path: Path
    ) -> None:
        """Bad paths and directories are named in the error."""
        if kwargs["argv"] == ["NONEXEC"]:
            plain = tmp_path / "plain.txt"
            plain.write_text("not a program")
            plain.chmod(0o644)
            kwargs = {"argv": [str(plain)]}
        spec = SupervisorSpec(
            name="root", intensity=Intensity(0, 1), children=[sleeper("x", **kwargs)]
        )
        hub = Hub(spec)
        events = hub.bus.subscribe()
        with trio.fail_after(30), pytest.raises(SupervisorEscalation):
            await hub.serve()
        hub.bus.close()
        failures = [e async for e in events if isinstance(e, ChildSpawnFailed)]

        assert fragment in failures[0].error


class TestControl:
    async def test_terminate_restart_start_delete(self) -> None:
        """The run-time control API acts on one child and reports clear errors."""
        spec = SupervisorSpec(name="root", children=[sleeper("a"), sleeper("b")])
        async with running(spec, max_agents=3) as (hub, events):
            a1 = pids(hub)["a"]
            await hub.terminate_child("a")
            info = {r.info.id: r.info for r in hub.which_children()}
            assert ChildState.STOPPED == info["a"].state and info["a"].pid is None
            assert not alive(a1)  # type: ignore[arg-type]

            await hub.restart_child("a")
            assert pids(hub)["a"] not in (None, a1)

            await hub.start_child("root", sleeper("c"))
            assert ["a", "b", "c"] == [r.info.id for r in hub.which_children()]
            with pytest.raises(MaxAgentsExceeded, match="max_agents=3"):
                await hub.start_child("root", sleeper("d"))
            with pytest.raises(ControlError, match="already"):
                await hub.start_child("root", sleeper("b"))

            await hub.root.delete_child("c")
            await hub.start_child("root", sleeper("d"))  # c's slot was freed
            with pytest.raises(ChildNotFound, match="no child 'zzz'"):
                await hub.terminate_child("zzz")
            info = {r.info.id: r.info for r in hub.which_children()}
            assert info["a"].restarts == 1 and info["b"].uptime is not None
            assert 3 == hub.count_children()["active"]

    async def test_running_child_restart_and_logs(self) -> None:
        """restart_child on a running child replaces it; logs keep its output lines."""
        code = "import sys; print('one'); print('two', file=sys.stderr, flush=True); print('three', flush=True); import time; time.sleep(1000)"
        spec = SupervisorSpec(name="root", children=[python_child("talker", code)])
        async with running(spec) as (hub, events):
            await wait_event(events, is_("output", "talker", line="three"))
            assert {"one", "[stderr] two", "three"} == set(hub.logs("talker"))
            assert ["three"] == hub.logs("talker", 1) or ["[stderr] two"] == hub.logs("talker", 1)
            first = pids(hub)["talker"]
            await hub.restart_child("talker")
            assert pids(hub)["talker"] != first

    async def test_pool_resize_reuses_ids(self) -> None:
        """Shrinking stops the highest members; growing reuses the lowest free ids."""
        pool = PoolSpec(agent_type="w", template=sleeper("t"), size=3, max_size=5)
        async with running([pool], max_agents=4) as (hub, events):
            await hub.resize("w", 1)
            assert ["w-agent-1"] == [
                r.info.id for r in hub.which_children() if r.info.kind == "worker"
            ]
            await hub.resize("w-pool", 4)
            assert ["w-agent-1", "w-agent-2", "w-agent-3", "w-agent-4"] == [
                r.info.id for r in hub.which_children() if r.info.kind == "worker"
            ]
            with pytest.raises(MaxAgentsExceeded):
                await hub.resize("w", 5)
            with pytest.raises(ControlError, match="max_size=5"):
                await hub.resize("w", 6)
            with pytest.raises(ControlError, match="not a pool"):
                await hub.root.resize(2)
            with pytest.raises(ControlError, match="resize"):
                await hub.supervisor("w").start_child(sleeper("x"))
            with pytest.raises(ChildNotFound, match="supervisor named 'nope'"):
                hub.supervisor("nope")
