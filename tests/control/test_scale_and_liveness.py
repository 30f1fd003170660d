"""``hubvisor scale`` names what can scale; READY is a proof of life (a fresh agent has a
heartbeat age at once); issue 22."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from strategies import Intensity
from supervisor import ChildSpec, Hub, PoolSpec, SupervisorSpec
from supervisor.testing import SimBehaviour, SimulatedProcessBackend
from tests.control.test_commands import agent, cli, cli_json, served
from tests.helpers import PY, is_, wait_event


async def test_scale_of_fixed_agents_names_the_pools_not_the_type_it_refused(
    tmp_path: Path,
) -> None:
    """'word' agents are fixed children: scaling 'word' says so and offers only the
    pools' types (it offered 'word' itself before)."""
    spec = SupervisorSpec(
        name="hub",
        intensity=Intensity(20, 10),
        children=[
            PoolSpec(agent_type="git", template=agent("g", "git"), size=1),
            agent("speller", "word"),
        ],
    )
    async with served(spec, tmp_path) as (hub, events, path):
        await wait_event(events, is_("running", "speller"))
        word = await cli(path, "scale", "word", "2")
        nope = await cli(path, "scale", "nope", "2")
        git = await cli(path, "scale", "git", "2")

    assert 1 == word.exit_code
    assert (
        "no pool 'word' in the hub; the 'word' agents are fixed children, not a pool, so "
        "they do not scale; give a pool's agent type (git), or a pool's name or path"
    ) in " ".join(word.output.split())
    assert 1 == nope.exit_code and "give a pool's agent type (git)" in nope.output
    assert "fixed children" not in nope.output
    assert (0, "git: 2 members\n") == (git.exit_code, git.output)


async def test_a_hub_without_pools_says_so(tmp_path: Path) -> None:
    spec = SupervisorSpec(name="hub", intensity=Intensity(20, 10), children=[agent("a1")])
    async with served(spec, tmp_path) as (hub, events, path):
        result = await cli(path, "scale", "w", "2")

    assert "give a pool's agent type (the hub has no pools)" in result.output


async def test_ready_is_a_proof_of_life(autojump_clock: trio.testing.MockClock) -> None:
    """An agent that said READY and no heartbeat yet has a last heartbeat (the READY's
    time): status shows an age, not "-"."""
    backend = SimulatedProcessBackend(
        {"a": [SimBehaviour(ready_after=2.0, heartbeat_interval=None)]}
    )
    spec = ChildSpec(id="a", argv=["sim"], ready="notify", heartbeat_timeout=None)
    hub = Hub([spec], backend=backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(1.0)
        await hub.registry.sync()
        assert hub.registry.get("a").last_heartbeat is None  # type: ignore[union-attr]
        await trio.sleep(2.0)
        await hub.registry.sync()
        rec = hub.registry.get("a")
        assert rec is not None and "idle" == rec.status
        assert pytest.approx(trio.current_time() - 1.0) == rec.last_heartbeat
        await hub.stop()


async def test_a_fresh_agent_shows_a_heartbeat_age_in_status(tmp_path: Path) -> None:
    """Right after READY (before any HEARTBEAT: this one sends none) the status has a
    number for the heartbeat."""
    code = (
        "import os, socket, time\n"
        "s = socket.socket(fileno=int(os.environ['HUBVISOR_NOTIFY_FD']))\n"
        "s.send(b'READY')\n"
        "time.sleep(1000)\n"
    )
    child = ChildSpec(
        id="quiet",
        argv=[PY, "-c", code],
        ready="notify",
        heartbeat_timeout=None,
        shutdown=2.0,
    )
    spec = SupervisorSpec(name="hub", intensity=Intensity(20, 10), children=[child])
    async with served(spec, tmp_path) as (hub, events, path):
        await wait_event(events, is_("running", "quiet"))
        await hub.registry.sync()
        status = await cli_json(path, "status")

    (quiet,) = status["agents"]
    assert quiet["heartbeat_age"] is not None and 0 <= quiet["heartbeat_age"] < 30
