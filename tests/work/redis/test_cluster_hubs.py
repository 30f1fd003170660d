"""Hubs on a real Redis Cluster (3 masters, a replica each): ``redis+cluster://`` URLs and
``--redis-cluster``, the work store and the registry mirror on it, and what a Cluster
cannot do (a database other than 0) refused by name."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from supervisor import ConfigError
from supervisor._redis_cluster import cluster_seeds, cluster_url
from supervisor._redis_link import clean_error, make_client, redact_url
from supervisor._registry_redis import RedisMirror

from ... import raw_agent
from ...redis_cluster import RedisClusterProcs, redis_cluster, types_on_masters
from ...redis_hubs import HUBVISOR, HubProc, wait_for

__all__ = ["redis_cluster"]

pytestmark = pytest.mark.slow

POOL = """
    PoolSpec(
        agent_type="{type}",
        size={size},
        template=ChildSpec(
            id="{type}", argv={argv!r}, agent_type="{type}", heartbeat_timeout=10.0,
            shutdown=2.0,
        ),
        intensity=Intensity(max_restarts=1000, window=1.0),
    ),"""


def spec(types: list[str], size: int = 2) -> str:
    """A tree of one pool of ``size`` raw agents per type."""
    argv = raw_agent.argv("--who")
    pools = "".join(POOL.format(type=t, argv=argv, size=size) for t in types)
    return (
        "from supervisor import ChildSpec, PoolSpec\n"
        "from strategies import Intensity\n"
        f"tree = [{pools}\n]\n"
    )


def log_of(client: Any, prefix: str, agent_type: str) -> list[dict[str, str]]:
    """Every final outcome written for ``agent_type`` (the record), in order."""
    rows = client.xrange(f"{prefix}:work:{{{agent_type}}}:log")
    return [{str(k): str(v) for k, v in fields.items()} for _id, fields in rows]


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterProcs) -> Iterator[Any]:
    c = redis_cluster.client()
    yield c
    c.close()


def test_cluster_urls_are_read_and_shown_without_the_password() -> None:
    url = "redis+cluster://u:s3cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0"
    seeds, options = cluster_seeds(url)
    assert seeds == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert options == {"username": "u", "password": "s3cret"}
    assert redact_url(url) == "redis+cluster://u:***@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0"
    assert "s3cret" not in clean_error(ValueError(f"boom {url}"), url)
    assert cluster_url("h1:7000,h2:7000") == "redis+cluster://h1:7000,h2:7000"
    assert cluster_url("rediss://:pw@h1:7000") == "rediss+cluster://:pw@h1:7000"
    assert cluster_seeds("rediss+cluster://h:1?ssl_ca_certs=/ca.pem")[1] == {
        "ssl_ca_certs": "/ca.pem",
        "ssl": True,
    }
    RedisMirror(url)  # the mirror takes it too


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+cluster://h:7000/3", "database 0 only"),
        ("redis+cluster://h:notaport", "is not host:port"),
        ("redis+cluster://h:7000?db=2", "unknown option 'db'"),
    ],
)
def test_what_a_cluster_cannot_do_is_refused_by_name(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        make_client(url, timeout=1, connections=1, client_name="t", error=ConfigError)


def test_a_cluster_down_at_start_is_an_outage_not_a_crash() -> None:
    import redis

    client = make_client(
        "redis+cluster://127.0.0.1:1", timeout=1, connections=1, client_name="t", error=ConfigError
    )
    with pytest.raises(redis.ConnectionError, match="no seed node of the Redis Cluster"):
        client.ping()
    client.close()


def test_two_hubs_share_work_of_types_on_different_masters(
    redis_cluster: RedisClusterProcs, cluster_client: Any, tmp_path: Path
) -> None:
    types = types_on_masters(redis_cluster, 2, stem="share")
    prefix = "share"
    text = spec(types)
    common = ("--redis-prefix", prefix, "--lease", "2")
    a = HubProc(tmp_path, "A", None, spec=text, args=("--redis", redis_cluster.url, *common))
    b = HubProc(tmp_path, "B", None, spec=text, args=("--redis-cluster", redis_cluster.seeds))
    b.args += common
    try:
        a.start()
        b.start()
        ids: dict[str, list[str]] = {t: [] for t in types}
        for n in range(20):
            for hub in (a, b):
                t = types[n % 2]
                ids[t].append(hub.call("submit", type=t, payload={"n": n})["id"])
        for t in types:
            wait_for(
                lambda t=t: len(log_of(cluster_client, prefix, t)) >= len(ids[t]),
                120,
                f"every {t} item to complete",
            )
        # the registry mirror: each hub's keys in its own slot, agents of both types
        for hub in (a, b):
            agents = cluster_client.smembers(f"{prefix}:hub:{{{hub.hub_id}}}:agents")
            assert len(agents) == 4, agents
    finally:
        a.stop()
        b.stop()
    for t in types:
        rows = log_of(cluster_client, prefix, t)
        counts = Counter(r["item"] for r in rows)
        assert set(counts) == set(ids[t]) and set(counts.values()) == {1}, counts
        assert {r["outcome"] for r in rows} == {"completed"}
        assert {r["hub"] for r in rows} <= {"A", "B"}
    assert {r["hub"] for t in types for r in log_of(cluster_client, prefix, t)} == {"A", "B"}
    for hub in (a, b):
        assert "Traceback" not in hub.log.read_text(), hub.log.read_text()[-3000:]


def test_status_cluster_shows_the_nodes_and_the_master_of_each_type(
    redis_cluster: RedisClusterProcs, tmp_path: Path
) -> None:
    types = types_on_masters(redis_cluster, 3, stem="topo")
    args = ("--redis-cluster", redis_cluster.seeds, "--redis-prefix", "topo")
    hub = HubProc(tmp_path, "T", None, spec=spec(types), args=args)
    try:
        hub.start()
        wait_for(
            lambda: set(hub.call("status", cluster=True)["cluster"]["queues"]) == set(types),
            30,
            "the hub to announce its types",
        )
        topo = hub.call("status", cluster=True)["cluster"]["redis"]
        shown = subprocess.run(
            [HUBVISOR, "status", "--cluster", "--socket", str(hub.socket)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "COLUMNS": "160"},
        )
    finally:
        hub.stop()
    nodes = {n["address"]: n for n in topo["nodes"]}
    assert set(nodes) == {f"127.0.0.1:{n.port}" for n in redis_cluster.nodes}
    masters = {a for a, n in nodes.items() if n["role"] == "master"}
    assert len(masters) == 3 and all(n["state"] == "ok" for n in nodes.values())
    assert {n["master"] for n in nodes.values() if n["role"] == "replica"} == masters
    assert sorted(nodes[m]["slots"] for m in masters) == ["0-5460", "10923-16383", "5461-10922"]
    for t in types:
        where = topo["types"][t]
        assert where["slot"] == key_slot(t.encode())
        assert where["master"] == f"127.0.0.1:{redis_cluster.master_of(where['slot']).port}"
    assert len({topo["types"][t]["master"] for t in types}) == 3
    assert shown.returncode == 0, shown.stderr
    assert "Redis Cluster nodes" in shown.stdout and "replica" in shown.stdout
    for t in types:
        assert t in shown.stdout


def test_the_cli_option_is_checked_and_names_one_redis() -> None:
    from click.testing import CliRunner

    from supervisor._cli import main

    bad = CliRunner().invoke(main, ["run", "x.py", "--redis-cluster", "h:7000/3"])
    assert bad.exit_code == 2 and "database 0 only" in bad.output
    both = ["run", "x.py", "--redis-cluster", "h:7000", "--redis", "redis://h"]
    twice = CliRunner().invoke(main, both)
    assert twice.exit_code == 2 and "give one" in twice.output


def test_replicated_acknowledgements_are_taken_on_a_cluster() -> None:
    """``replicas`` on a Cluster is a WAIT to each master a round wrote to
    (tests/work/redis/test_cluster_wait.py); without it, none."""
    from supervisor.work.redis import RedisWorkQueue

    assert RedisWorkQueue("redis+cluster://127.0.0.1:7000", replicas=1).replicas == 1
    assert RedisWorkQueue("redis+cluster://127.0.0.1:7000").replicas == 0
