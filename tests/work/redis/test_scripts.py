"""The server-side fence, property-tested: the work scripts run against a real
``redis-server`` by two hubs that take, start, finish, lose their leases, restart and come
back as zombies, in any order Hypothesis finds; a model predicts every accept and refusal.

Invariants after every step: each item has at most one final outcome in the record; an
item is either finished (in the record) or has exactly one live entry in its stream; a
finished item has no entry pending on any hub.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from supervisor.work.redis import enqueue
from supervisor.work.redis._scripts import _CANCEL, _CLAIM, _FENCED, _LAG, _RETRY, _SUBMIT, _TAKE

from ...redis_server import RedisServer

T = "w"
Q, DEAD, LOG = f"p:work:{{{T}}}:q", f"p:work:{{{T}}}:dead", f"p:work:{{{T}}}:log"
ALIVE = f"p:work:{{{T}}}:alive"
ITEM = f"p:work:{{{T}}}:item:"
HUBS = ("H1", "H2")


@attrs.define
class Lease:
    """What the model says about one unfinished item."""

    hub: str = ""
    token: str = ""
    attempt: int = 0


@pytest.fixture(scope="module")
def server() -> Any:
    s = RedisServer(appendfsync=None)
    s.start()
    yield s
    s.close()


def test_the_fence_holds_for_any_interleaving_of_two_hubs(server: RedisServer) -> None:
    client = server.client()

    class Fence(RuleBasedStateMachine):
        items = Bundle("items")

        def __init__(self) -> None:
            super().__init__()
            client.flushall()
            self.tokens = {h: secrets.token_hex(4) for h in HUBS}
            self.old_tokens: dict[str, list[str]] = {h: [] for h in HUBS}
            self.leases: dict[str, Lease] = {}  # unfinished items
            self.finished: set[str] = set()
            self.retried: set[str] = set()  # their earlier outcome stays in the record
            self.past: dict[str, tuple[str, str, int]] = {}  # the holder before the last

        # helpers

        def call(self, script: str, keys: tuple[str, ...], *args: Any) -> Any:
            return client.eval(script, len(keys), *keys, *args)

        def fenced(
            self, op: str, hub: str, token: str, item: str, attempt: int, *extra: Any
        ) -> Any:
            reply = self.call(
                _FENCED, (Q, DEAD, LOG, ITEM + item), op, hub, token, attempt, time.time(), *extra
            )
            return int(reply[0]), reply[1]

        def adopt(self, hub: str, reply: Any) -> None:
            for kind, flat, _prev in reply:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                if kind == "dead":
                    self.finished.add(fields["id"])
                    self.leases.pop(fields["id"], None)
                    continue
                lease = self.leases[fields["id"]]
                if lease.hub and (lease.hub, lease.token) != (hub, self.tokens[hub]):
                    self.past[fields["id"]] = (lease.hub, lease.token, lease.attempt)
                lease.hub, lease.token = hub, self.tokens[hub]
                if self.past.get(fields["id"], ("", ""))[:2] == (hub, lease.token):
                    # The incarnation it was taken from holds it again (the taker
                    # released it): not a zombie, its old attempt is merely stale.
                    del self.past[fields["id"]]

        # rules

        @rule(target=items)
        def submit(self) -> str:
            (item_id,) = enqueue(client, T, [{"n": 1}], prefix="p", max_deliveries=2)
            self.leases[item_id] = Lease()
            return item_id

        @rule(hub=st.sampled_from(HUBS), count=st.integers(1, 3))
        def take(self, hub: str, count: int) -> None:
            reply = self.call(
                _TAKE, (Q, DEAD, LOG), hub, self.tokens[hub], count, ITEM, time.time(), ">"
            )
            self.adopt(hub, reply)

        @rule(hub=st.sampled_from(HUBS))
        def claim_everything_idle(self, hub: str) -> None:
            """Another hub's lease ran out (min idle 0: every pending entry is 'expired')."""
            reply = self.call(
                _CLAIM, (Q, DEAD, LOG, ALIVE), hub, self.tokens[hub], 100, ITEM, time.time(), 0
            )
            self.adopt(hub, reply)

        @rule(hub=st.sampled_from(HUBS))
        def restart(self, hub: str) -> None:
            """The hub restarts with its id: a new token, its own pending entries read back."""
            self.old_tokens[hub].append(self.tokens[hub])
            self.tokens[hub] = secrets.token_hex(4)
            reply = self.call(
                _TAKE, (Q, DEAD, LOG), hub, self.tokens[hub], 100, ITEM, time.time(), "0"
            )
            self.adopt(hub, reply)

        @rule(item=items, hub=st.sampled_from(HUBS), zombie=st.booleans())
        def start(self, item: str, hub: str, zombie: bool) -> None:
            token = self.token_for(hub, zombie)
            lease = self.leases.get(item)
            attempt = (lease.attempt if lease else 0) + 1
            ok, _ = self.fenced("start", hub, token, item, attempt, attempt, "agent")
            holds = lease is not None and (lease.hub, lease.token) == (hub, token)
            if item in self.finished:
                return  # a start after the end is a harmless no-op either way
            assert bool(ok) == holds
            if ok:
                assert lease is not None
                lease.attempt = attempt

        @rule(
            item=items,
            hub=st.sampled_from(HUBS),
            zombie=st.booleans(),
            outcome=st.sampled_from(["completed", "failed", "dead"]),
            stale=st.booleans(),
        )
        def finish(self, item: str, hub: str, zombie: bool, outcome: str, stale: bool) -> None:
            token = self.token_for(hub, zombie)
            lease = self.leases.get(item)
            attempt = (lease.attempt if lease else 1) - (1 if stale else 0)
            before = client.xlen(LOG)
            ok, reason = self.fenced(
                "finish", hub, token, item, attempt, outcome, 1, "[]", '"r"', "", "agent", 60
            )
            holds = (
                lease is not None
                and (lease.hub, lease.token) == (hub, token)
                and attempt >= lease.attempt
            )
            if item in self.finished:
                assert client.xlen(LOG) == before  # never a second outcome
                return
            assert bool(ok) == holds, (reason, lease, hub, token, attempt)
            if ok:
                self.finished.add(item)
                del self.leases[item]
            else:
                assert client.xlen(LOG) == before

        @precondition(lambda self: any(i in self.leases for i in self.past))
        @rule(data=st.data(), outcome=st.sampled_from(["completed", "failed", "dead"]))
        def zombie_answers(self, data: st.DataObject, outcome: str) -> None:
            """The hub (incarnation) that held an item before it was taken over answers
            for its attempt: start, progress and finish are all refused."""
            item = data.draw(st.sampled_from(sorted(i for i in self.past if i in self.leases)))
            hub, token, attempt = self.past[item]
            before = client.xlen(LOG)
            for op, extra in (
                ("start", (attempt + 1, "zombie")),
                ("progress", ('"p"', "")),
                ("finish", (outcome, 1, "[]", '"zombie"', "", "zombie", 60)),
                ("release", (0, "[]")),
            ):
                ok, reason = self.fenced(op, hub, token, item, attempt, *extra)
                assert not ok, (op, reason)
                assert "lease lost" in reason
            assert client.xlen(LOG) == before
            assert client.hget(ITEM + item, "result") != '"zombie"'

        @rule(item=items, hub=st.sampled_from(HUBS))
        def release(self, item: str, hub: str) -> None:
            lease = self.leases.get(item)
            ok, _ = self.fenced(
                "release", hub, self.tokens[hub], item, lease.attempt if lease else 0, 0, "[]"
            )
            if item in self.finished:
                return
            assert lease is not None
            assert bool(ok) == ((lease.hub, lease.token) == (hub, self.tokens[hub]))
            if ok:
                lease.hub = lease.token = ""

        @precondition(lambda self: bool(self.finished))
        @rule(item=consumes(items))
        def retry(self, item: str) -> None:
            status = client.hget(ITEM + item, "st")
            reply = client.eval(_RETRY, 4, Q, DEAD, LOG, ITEM + item, item)
            assert bool(int(reply[0])) == (status in ("dead", "failed"))
            if int(reply[0]):
                self.finished.discard(item)
                self.leases[item] = Lease(attempt=int(client.hget(ITEM + item, "att") or 0))
                self.retried.add(item)

        def token_for(self, hub: str, zombie: bool) -> str:
            old = self.old_tokens[hub]
            return old[-1] if zombie and old else self.tokens[hub]

        # invariants

        @invariant()
        def one_outcome_each_and_every_item_somewhere(self) -> None:
            outcomes: dict[str, int] = {}
            for _id, fields in client.xrange(LOG):
                outcomes[fields["item"]] = outcomes.get(fields["item"], 0) + 1
            for item_id, n in outcomes.items():
                assert n == 1 or item_id in self.retried, (item_id, n)
            entries = {e for e, _ in client.xrange(Q)}
            pending = {row["message_id"] for row in _pending(client)}
            for item_id in self.leases:
                entry = client.hget(ITEM + item_id, "entry")
                assert entry in entries, f"{item_id} lost: its entry {entry} is gone"
            for item_id in self.finished:
                entry = client.hget(ITEM + item_id, "entry")
                assert entry not in entries and entry not in pending

    Fence.TestCase.settings = settings(
        max_examples=int(os.environ.get("HUBVISOR_EXPLORE_EXAMPLES", 60)),  # --explore
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    try:
        Fence.TestCase().runTest()
    finally:
        client.close()


def _pending(client: Any) -> list[dict[str, Any]]:
    try:
        return list(client.xpending_range(Q, "hubs", "-", "+", 10_000))
    except Exception:  # no group yet
        return []


def test_a_dead_letter_keeps_its_history(server: RedisServer) -> None:
    client = server.client()
    try:
        client.flushall()
        (item_id,) = enqueue(client, T, [1], prefix="p", max_deliveries=1)
        taken = client.eval(_TAKE, 3, Q, DEAD, LOG, "H1", "t1", 1, ITEM, time.time(), ">")
        assert len(taken) == 1
        client.eval(_FENCED, 4, Q, DEAD, LOG, ITEM + item_id, "start", "H1", "t1", 1, 0, 1, "a")
        # H1 dies holding it: H2 takes it after the lease; its one delivery was spent.
        claimed = client.eval(_CLAIM, 4, Q, DEAD, LOG, ALIVE, "H2", "t2", 10, ITEM, time.time(), 0)
        assert [(kind, prev) for kind, _, prev in claimed] == [("dead", "H1")]
        ((_, fields),) = client.xrange(DEAD)
        history = json.loads(fields["history"])
        assert history[-1]["outcome"] == "reclaimed:hub"
        assert "H1 lost its lease" in fields["error"] or "H1" in fields["error"]
        assert client.hget(ITEM + item_id, "st") == "dead"
        assert client.xlen(Q) == 0
    finally:
        client.close()


def _submit(client: Any, item_id: str, priority: int, max_deliveries: int = 3) -> None:
    """The submit script as a hub sends it with a priority (ARGV[12])."""
    keys = (Q, ITEM + item_id, f"p:work:{{{T}}}:keys", f"p:work:{{{T}}}:keyage", DELAYED)
    args = (item_id, T, "{}", max_deliveries, "t", time.time(), "", ITEM, time.time(), "", "")
    client.eval(_SUBMIT, len(keys), *keys, *args, priority)


DELAYED = f"p:work:{{{T}}}:delayed"
PRIOS = f"p:work:{{{T}}}:prios"


def test_every_script_finds_an_item_in_its_prioritys_stream(server: RedisServer) -> None:
    """Priorities (issue 21): an item's entry lives in its level's stream
    (``...:q:<p>``; 0 in ``...:q``). A take reads the highest level first; a hub that
    died holding one has it claimed from that stream; a release, a retry and a cancel
    act on that stream too; the lag counts every level; an emptied level leaves the set
    at the next take."""
    client = server.client()
    try:
        client.flushall()
        _submit(client, "w-low", -2)
        _submit(client, "w-zero", 0)
        _submit(client, "w-high", 7, max_deliveries=1)
        _submit(client, "w-high2", 7)
        assert ["7", "-2"] == client.zrevrange(PRIOS, 0, -1)
        assert (1, 2, 1) == tuple(client.xlen(k) for k in (Q, Q + ":7", Q + ":-2"))
        assert 4 == client.eval(_LAG, 1, Q)  # before any group: every entry waits
        take = (Q, DEAD, LOG, DELAYED)

        def took(hub: str, tok: str, n: int) -> list[str]:
            got = client.eval(_TAKE, 4, *take, hub, tok, n, ITEM, time.time(), ">")
            return [dict(zip(f[::2], f[1::2], strict=True))["id"] for _, f, _ in got]

        assert ["w-high"] == took("H1", "t1", 1)
        assert 3 == client.eval(_LAG, 1, Q)
        start = ("start", "H1", "t1", 1, 0, 1, "a")
        assert 1 == client.eval(_FENCED, 4, Q, DEAD, LOG, ITEM + "w-high", *start)[0]
        # H1 dies holding it: H2 claims it from the level-7 stream (its one delivery spent)
        claimed = client.eval(_CLAIM, 4, Q, DEAD, LOG, ALIVE, "H2", "t2", 10, ITEM, time.time(), 0)
        assert [("dead", "H1")] == [(kind, prev) for kind, _, prev in claimed]
        assert 0 == len(client.xpending_range(Q + ":7", "hubs", "-", "+", 10))
        assert ["w-high2", "w-zero"] == took("H2", "t2", 2)
        # a release puts it back at the end of its own level's stream
        release = ("release", "H2", "t2", 0, time.time(), 0, "[]")
        assert 1 == client.eval(_FENCED, 4, Q, DEAD, LOG, ITEM + "w-high2", *release)[0]
        assert ["w-high2"] == [f["item"] for _, f in client.xrange(Q + ":7")]
        # a cancel acks and deletes the entry in its level's stream
        assert (
            1 == client.eval(_CANCEL, 4, Q, DEAD, LOG, ITEM + "w-high2", "w-high2", 0, "x", 60)[0]
        )
        assert 0 == client.xlen(Q + ":7")
        # a retry of the dead one queues it again in its level's stream, first in line
        assert 1 == client.eval(_RETRY, 4, Q, DEAD, LOG, ITEM + "w-high", "w-high")[0]
        assert "7" in client.zrange(PRIOS, 0, -1)
        assert ["w-high", "w-low"] == took("H2", "t2", 5)
        fin = ("finish", "H2", "t2", 1, time.time(), "completed", 1, "[]", "1", "", "a", 60)
        assert 1 == client.eval(_FENCED, 4, Q, DEAD, LOG, ITEM + "w-high", *fin)[0]
        assert 0 == client.xlen(Q + ":7")
        assert [] == took("H2", "t2", 1)
        assert ["-2"] == client.zrevrange(PRIOS, 0, -1)  # level 7 was empty: it left
        assert not client.exists(Q + ":7")
        assert 0 == client.eval(_LAG, 1, Q)
    finally:
        client.close()
