"""One script call per agent type per round (issue 24, ``_batch.py``): a round's script
calls on one type's keys run in one batch call, in order, each answered as its own call
would be, against a real ``redis-server`` and a real Redis Cluster."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from supervisor.work.redis._batch import Batcher
from supervisor.work.redis._scripts import _FENCED, _SHA, _SUBMIT, _TAKE

from ...redis_cluster import RedisClusterProcs, redis_cluster, types_on_masters
from .test_cluster_slots import TYPES, keys_of, script_calls

__all__ = ["redis_cluster"]

P = "bt"


def q_key(t: str) -> str:
    return f"{P}:work:{{{t}}}:q"


def item_key(t: str, item_id: str) -> str:
    return f"{P}:work:{{{t}}}:item:{item_id}"


def submit(b: Any, t: str, item_id: str, payload: Any = "{}", source: Any = "api") -> None:
    """A submit script call (the short form: no key, delay or priority)."""
    keys = (q_key(t), item_key(t, item_id))
    b.evalsha(_SHA[_SUBMIT], 2, *keys, item_id, t, payload, 3, source, 1.5)


def take(b: Any, t: str, n: Any) -> None:
    keys = (q_key(t), *(f"{P}:work:{{{t}}}:{name}" for name in ("dead", "log", "delayed")))
    args = ("H", "tok", n, f"{P}:work:{{{t}}}:item:", time.time(), ">", "*")
    b.evalsha(_SHA[_TAKE], len(keys), *keys, *args)


def sent(client: Any, b: Batcher) -> list[Any]:
    """Send what ``b`` recorded on one pipeline of ``client``: the replies, as recorded."""
    pipe = client.pipeline(transaction=False)
    b.send(pipe)
    return b.replies(pipe.execute(raise_on_error=False))


@pytest.fixture
def loaded(client: Any) -> Any:
    for script in _SHA:
        client.script_load(script)
    return client


def test_one_types_calls_go_as_one_call_in_order_each_answered(loaded: Any) -> None:
    b = Batcher(P)
    for n in range(3):
        submit(b, "a", f"a-{n}")
    submit(b, "b", "b-0")
    submit(b, "b", "b-1")
    b.hget(item_key("a", "a-0"), "st")  # a type's read: the type's next calls follow it
    submit(b, "a", "a-3")
    submit(b, "a", "a-0")  # there already: 1, and nothing changes
    take(b, "a", 10)
    replies = sent(loaded, b)
    assert b.batches == 3  # a (3 submits), b (2), a (2 submits and the take)
    assert replies[:6] == [1, 1, 1, 1, 1, "queued"]
    assert replies[6:8] == [1, 1]
    taken = [(kind, dict(zip(f[::2], f[1::2], strict=True))["id"]) for kind, f, _ in replies[8]]
    assert taken == [("item", f"a-{n}") for n in (0, 1, 2, 3)]
    assert loaded.xlen(q_key("b")) == 2
    assert loaded.info("commandstats")["cmdstat_evalsha"]["calls"] == 3


def test_a_call_that_fails_answers_its_own_error_and_the_others_run(loaded: Any) -> None:
    loaded.set(item_key("a", "a-9"), "not a hash")  # the fenced script's HMGET: WRONGTYPE
    b = Batcher(P)
    submit(b, "a", "a-1")
    keys = (q_key("a"), f"{P}:work:{{a}}:dead", f"{P}:work:{{a}}:log", item_key("a", "a-9"))
    b.evalsha(_SHA[_FENCED], 4, *keys, "start", "H", "tok", 1, 0.0, 1, "x")
    take(b, "a", "not a number")  # a Lua error: comparing a number with nil
    submit(b, "a", "a-2")
    replies = sent(loaded, b)
    assert b.batches == 1
    assert replies[0] == 1 and replies[3] == 1
    assert isinstance(replies[1], redis.ResponseError) and "WRONGTYPE" in str(replies[1])
    assert isinstance(replies[2], redis.ResponseError) and "compare" in str(replies[2])
    assert loaded.exists(item_key("a", "a-2"))


def test_a_server_that_takes_no_writes_refuses_the_whole_batch(loaded: Any) -> None:
    """OOM (as READONLY on a replica): the batch's reply, each call's, as it would have
    been each call's own: the round is held and sent again as before."""
    loaded.config_set("maxmemory-policy", "noeviction")
    loaded.config_set("maxmemory", "1")
    try:
        b = Batcher(P)
        submit(b, "a", "a-1")
        submit(b, "a", "a-2")
        replies = sent(loaded, b)
    finally:
        loaded.config_set("maxmemory", "0")
    assert [type(r) for r in replies] == [redis.exceptions.OutOfMemoryError] * 2
    assert not loaded.exists(item_key("a", "a-1"))


def test_text_reaches_redis_as_each_call_of_its_own_writes_it(loaded: Any) -> None:
    """A lone surrogate (redis-py's ``backslashreplace``), NUL, quotes, backslashes and
    non-ASCII text, ints and floats arrive byte for byte as a call of its own sends them."""
    text = 'a\udcff b\x00 "c" \\d é 😀'
    mine = redis.Redis(port=loaded.connection_pool.connection_kwargs["port"])
    mine.connection_pool.connection_kwargs["encoding_errors"] = "backslashreplace"
    fields: dict[str, dict[Any, Any]] = {}
    for batched in (True, False):
        b = Batcher(P)
        for n in range(2):
            submit(b, "a", f"a-{batched}-{n}", text, 12345678901234567 if n else 0.1 + 0.2)
        pipe = mine.pipeline(transaction=False)
        if batched:
            b.send(pipe)
        else:
            for name, args, kwargs in b.calls:
                getattr(pipe, name)(*args, **kwargs)
        assert pipe.execute() == ([[[1, 1], []]] if batched else [1, 1])
        for n in range(2):
            got = mine.hgetall(item_key("a", f"a-{batched}-{n}"))
            fields[f"{batched}{n}"] = {k: v for k, v in got.items() if k not in (b"id", b"entry")}
    mine.close()
    assert fields["True0"] == fields["False0"] and fields["True1"] == fields["False1"]
    assert fields["True0"][b"payload"] == text.replace("\udcff", "\\udcff").encode()


def test_an_argument_json_cannot_carry_goes_in_a_call_of_its_own(loaded: Any) -> None:
    b = Batcher(P)
    submit(b, "a", "a-1")
    submit(b, "a", "a-2", payload=b"\xff raw bytes")
    submit(b, "a", "a-3")
    assert sent(loaded, b) == [1, 1, 1]
    assert b.batches == 0  # a, the bytes one, a: three calls in their order
    with redis.Redis(port=loaded.connection_pool.connection_kwargs["port"]) as raw:
        assert raw.hget(item_key("a", "a-2"), "payload") == b"\xff raw bytes"


def test_every_batch_keeps_to_its_types_slot() -> None:
    """Each command a batched round sends acts on one slot: a type's batch on the type's."""
    for agent_type in TYPES:
        b = Batcher("hv")
        for method, args in script_calls(agent_type):
            getattr(b, method)(*args)
        rec = _Recorder()
        b.send(rec)
        assert b.batches >= 1
        for method, args in rec.calls:
            slots = {key_slot(k.encode()) for k in keys_of(method, args)}
            assert len(slots) == 1, (method, args)


def test_batched_rounds_run_on_a_real_cluster_without_crossslot(
    redis_cluster: RedisClusterProcs,
) -> None:
    with redis_cluster.client() as c:
        for script in _SHA:
            c.script_load(script)
        for agent_type in types_on_masters(redis_cluster, 3, stem="batch"):
            b = Batcher(prefix := f"batch{time.monotonic_ns()}")
            for method, args in script_calls(agent_type, prefix=prefix):
                getattr(b, method)(*args)
            replies = sent(c, b)
            assert b.batches >= 1
            errors = [(m, r) for (m, _, _), r in zip(b.calls, replies, strict=True) if _err(r)]
            assert not errors, errors


def _err(reply: Any) -> bool:
    return isinstance(reply, Exception)


class _Recorder:
    """Stands in for a pipeline: records each command (method, args)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kw: Any) -> None:
            self.calls.append((name, args + tuple(kw.values())))

        return record


def test_priorities_and_tiers_read_through_the_batchs_stream_helpers(loaded: Any) -> None:
    """Submits of two priorities and a tier, then takes, all batched (the streams'
    helpers made once per batch): the higher priority first, the tier's item only to a
    pool of its labels."""
    from supervisor.work.redis import RedisWorkQueue

    q = RedisWorkQueue("redis://localhost", prefix=P)
    q.submit("a", {"n": 0}, max_deliveries=3)
    q.submit("a", {"n": 4}, max_deliveries=3, priority=4)
    q.submit("a", {"n": "large"}, max_deliveries=3, require={"tier": "large"})
    b = Batcher(P)
    for op in q.writes.take():
        b.evalsha(_SHA[op.script], len(op.keys), *op.keys, *op.args)
    keys = (q_key("a"), *(f"{P}:work:{{a}}:{name}" for name in ("dead", "log", "delayed")))
    for labels in ("[{}]", '[{"tier":"large"}]'):
        args = ("H", "tok", 5, f"{P}:work:{{a}}:item:", time.time(), ">", labels)
        b.evalsha(_SHA[_TAKE], len(keys), *keys, *args)
    replies = sent(loaded, b)
    assert b.batches == 1 and replies[:3] == [1, 1, 1]
    payloads = [
        [dict(zip(f[::2], f[1::2], strict=True))["payload"] for _, f, _ in r] for r in replies[3:]
    ]
    assert payloads == [['{"n":4}', '{"n":0}'], ['{"n":"large"}']]
