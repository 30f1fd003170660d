"""A master of a Redis Cluster that does not answer holds back only the types whose slots
it serves: a hub sends each round by node, so the types on the other masters keep
flowing (their submits are stored, their items done) while that master's writes wait,
held in order, until its replica is promoted. Here the replica is paused (SIGSTOP) while
the test looks, so nothing races the promotion; the Cluster runs with
``cluster-require-full-coverage no`` (with the default, every master refuses every
command once it sees a slot without a live master, until the promotion)."""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from ...redis_cluster import RedisClusterProcs, types_on_masters
from ...redis_hubs import HubProc, wait_for
from .test_cluster_hubs import log_of, spec

pytestmark = pytest.mark.slow

PREFIX = "nd"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcs]:
    """A Cluster of 3 masters with a replica each, whose masters serve their slots while
    another master's slots have no live master."""
    # A replica paused for long still fails over (the validity factor would refuse one
    # whose data is older than 10 node timeouts, which a slow machine could reach).
    procs = RedisClusterProcs(full_coverage=False, extra=("--cluster-replica-validity-factor", "0"))
    try:
        procs.start()
        yield procs
    finally:
        procs.close()


def record(cluster: RedisClusterProcs, *types: str) -> list[dict[str, str]]:
    """The record of ``types`` (empty while a master of one does not answer)."""
    try:
        with cluster.client() as c:
            return [r for t in types for r in log_of(c, PREFIX, t)]
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        return []


def test_a_dead_master_holds_back_only_the_types_it_serves(
    cluster: RedisClusterProcs, tmp_path: Path
) -> None:
    down, up = types_on_masters(cluster, 2, stem="nd")
    args = ("--redis-cluster", cluster.seeds, "--redis-prefix", PREFIX, "--lease", "10")
    hub = HubProc(tmp_path, "N", None, spec=spec([down, up]), args=args, call_timeout=30)
    ids: dict[str, list[str]] = {down: [], up: []}
    replica = None
    try:
        hub.start()
        pids = sorted(hub.agent_pids())
        for n in range(6):
            t = (down, up)[n % 2]
            reply = hub.call("submit", type=t, payload={"n": n})
            assert reply["stored"], reply
            ids[t].append(reply["id"])
        wait_for(lambda: len(record(cluster, down, up)) == 6, 60, "the first items done")
        master = cluster.master_of(key_slot(down.encode()))
        replica = cluster.replica_of(master)
        with master.client() as m:  # the acknowledged submits are on the replica
            assert m.execute_command("WAIT", 1, 5000) == 1
        replica.proc.send_signal(signal.SIGSTOP)  # no promotion until the test says
        master.kill()
        # a submit of the dead master's type is held (answered after 5 s, stored: false)
        held: dict[str, Any] = {}
        waiter = threading.Thread(
            target=lambda: held.update(hub.call("submit", type=down, payload={"n": 99}))
        )
        waiter.start()
        # ... while the other master's type flows: stored at once, done
        for n in range(10):
            reply = hub.call("submit", type=up, payload={"n": n})
            assert reply["stored"], f"a submit of {up} was held while only {down}'s master is down"
            ids[up].append(reply["id"])
        wait_for(
            lambda: {r["item"] for r in record(cluster, up)} >= set(ids[up]),
            60,
            f"the {up} items to be done while {down}'s master is down",
        )
        waiter.join(30)
        assert held and not held["stored"], held
        ids[down].append(held["id"])
        replica.proc.send_signal(signal.SIGCONT)  # promoted: the held writes go out
        wait_for(
            lambda: {r["item"] for r in record(cluster, down)} >= set(ids[down]),
            120,
            f"the held {down} item to be done on the promoted replica",
        )
        assert sorted(hub.agent_pids()) == pids, "an agent was restarted"
    finally:
        if replica is not None and replica.proc is not None:
            replica.proc.send_signal(signal.SIGCONT)
        hub.stop()
    for t in (down, up):
        counts = Counter(r["item"] for r in record(cluster, t))
        assert set(counts) == set(ids[t]) and set(counts.values()) == {1}, counts
    log = hub.log.read_text()
    assert f"the master of {down} does not answer" in log, log[-3000:]
    assert f"answers for {down} again" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


class _Recorder:
    """A pipeline that records the key of each command (its slot) and runs none."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def evalsha(self, _sha: str, numkeys: int, *rest: Any) -> None:
        self.keys.append(rest[0] if numkeys else "")

    def __getattr__(self, _name: str) -> Any:
        return lambda key, *_args, **_kwargs: self.keys.append(key)


def test_the_answered_part_of_a_round_is_cut_in_the_rounds_own_layout() -> None:
    """Every part of a round (writes, renewals, heartbeat, proofs of life, lag, checks,
    takes) is cut by its reply: what is kept is exactly what the master of ``b``
    answered, in the order ``_fill`` sends it, and ``a``'s writes are held in order."""
    from supervisor.work._item import WorkItem
    from supervisor.work.redis import RedisWorkQueue
    from supervisor.work.redis._nodes import answered_part
    from supervisor.work.redis._outbox import _Op
    from supervisor.work.redis._scripts import _CLAIM, _FENCED, _TAKE
    from supervisor.work.redis._store import _Round

    q = RedisWorkQueue("redis+cluster://127.0.0.1:1", prefix="cut")
    items = {t: WorkItem(f"{t}-1", t, None, 3, 0.0) for t in "ab"}
    ops = [
        _Op(_FENCED, q._keys(t, f"{t}-{n}"), ("result",), f"{t}-{n}", "result")
        for t, n in (("a", 1), ("b", 1), ("a", 2), ("b", 2))
    ]
    r = _Round(
        ops=ops,
        renewals=[(items[t], q._keys(t, items[t].id), ("renew",)) for t in "ab"],
        beat={"types": json.dumps(["a", "b"])},
        beats=["a", "b"],
        lag_types=["a", "b"],
        checks=[items["b"], items["a"]],
        reads=[(_TAKE, "a", ()), (_CLAIM, "b", ()), (_TAKE, "b", ())],
        claimed=True,
    )
    sent = _Recorder()
    q._actor._fill(sent, r)
    replies: list[Any] = [
        redis.ConnectionError("down") if "{a}" in key else f"reply to {key}" for key in sent.keys
    ]
    part = answered_part(r, replies)
    assert part is not None
    assert part.held == [ops[0], ops[2]] and part.types == {"a"}
    assert [op.item_id for op in part.round.ops] == ["b-1", "b-2"]
    again = _Recorder()
    q._actor._fill(again, part.round)
    assert part.replies == [f"reply to {key}" for key in again.keys]
    assert again.keys == [key for key in sent.keys if "{a}" not in key]
    assert answered_part(r, [f"reply to {key}" for key in sent.keys]) is None


def test_clusterdown_and_tryagain_replies_are_unanswered_never_refusals() -> None:
    """A pipeline's per-command CLUSTERDOWN (every master while it sees a slot without a
    live master) is no refusal of the write, which the store would drop: it is held."""
    from redis.exceptions import ClusterDownError, TryAgainError

    from supervisor._redis_cluster import _down_errors, _settled

    down = _down_errors()
    got = _settled([ClusterDownError("The cluster is down"), "OK", TryAgainError("x")], down, None)
    assert isinstance(got[0], redis.ConnectionError) and got[1] == "OK"
    assert isinstance(got[2], redis.ConnectionError)
    with pytest.raises(redis.ConnectionError, match="cluster is down"):
        _settled([ClusterDownError("The cluster is down")] * 2, down, None)
    assert _settled([], down, None) == []
