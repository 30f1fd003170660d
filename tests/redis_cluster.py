"""A real Redis Cluster for the tests: 3 masters with one replica each, on free loopback
ports, each node a ``redis-server --cluster-enabled yes`` in its own temporary directory
(no persistence: the replicas are what survives a master's death).

The fixture :func:`redis_cluster` is module-scoped (starting six servers and forming the
cluster takes a few seconds), so its processes carry a marker of their own rather than
the test run's: the per-test leak check of ``conftest.py`` does not count them, and the
fixture stops and reaps every one of them at teardown (or at once if forming fails).
Tests that share it use their own key prefix or agent types.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from .redis_server import REDIS_SERVER, ServerProc

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
NODE_TIMEOUT_MS = 3000  # how long a silent master lasts before its replica takes over


class ClusterNodeProc(ServerProc):
    """One node of the cluster: its port, its process and its directory."""

    def __init__(
        self, port: int, data: str, env: dict[str, str], extra: tuple[str, ...] = ()
    ) -> None:
        self.port = port
        self.data = data
        self.env = env
        self.extra = extra  # more redis-server arguments
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            REDIS_SERVER,
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", os.path.join(self.data, "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--dir", self.data, "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--loglevel", "warning", *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )


class RedisClusterProcs:
    """Six nodes formed into a cluster of 3 masters, one replica each."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        full_coverage: bool = True,
        extra: tuple[str, ...] = (),
    ) -> None:
        """``full_coverage=False``: ``cluster-require-full-coverage no`` (the masters
        that are up serve their slots while another master's are unserved); ``extra``:
        more ``redis-server`` arguments for every node."""
        for tool in (REDIS_SERVER, REDIS_CLI):
            if not os.path.exists(tool):
                pytest.skip(f"{tool} is not installed (.ci/run installs redis-server)")
        self._tmp = tempfile.TemporaryDirectory(prefix="hubvisor-redis-cluster-")
        # Not the test run's marker: the per-test leak check must not count the nodes of
        # a module-scoped cluster; teardown stops them.
        env = {**os.environ}
        env["HUBVISOR_TEST_RUN"] = env.get("HUBVISOR_TEST_RUN", "") + "-cluster"
        self.nodes: list[ClusterNodeProc] = []
        if not full_coverage:
            extra = ("--cluster-require-full-coverage", "no", *extra)
        for n in range(masters * (1 + replicas)):
            data = os.path.join(self._tmp.name, f"node{n}")
            os.mkdir(data)
            port = _node_port({x.port for x in self.nodes})
            self.nodes.append(ClusterNodeProc(port, data, env, extra))
        self.replicas = replicas

    @property
    def seeds(self) -> str:
        """``host:port,host:port`` of every node (the seed list of a URL)."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def url(self) -> str:
        """``redis+cluster://`` with two seed nodes."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def start(self) -> None:
        """Start the nodes, form the cluster and wait until every node says it is ok."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            self._wait(lambda n=node: _ping(n), f"node {node.port} to answer")
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60, env=self.nodes[0].env,
        )  # fmt: skip
        self.wait_ok()

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` and every master that
        has a replica sees it linked."""
        self._wait(self._all_ok, "every node to say cluster_state:ok", timeout)

    def _all_ok(self) -> bool:
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                with node.client() as c:
                    if c.cluster("info").get("cluster_state") != "ok":
                        return False
                    info = c.info("replication")
                    if info.get("role") == "slave" and info.get("master_link_status") != "up":
                        return False
            except redis.RedisError:
                return False
        return True

    def _wait(self, ok: object, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():  # type: ignore[operator]
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {node.port} exited")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def client(self) -> RedisCluster:
        """A fresh cluster client (decoded strings), for checking what hubs wrote."""
        nodes = [ClusterNode("127.0.0.1", n.port) for n in self.nodes if n.proc is not None]
        return RedisCluster(startup_nodes=nodes, decode_responses=True, socket_timeout=5)

    def master_of(self, slot: int) -> ClusterNodeProc:
        """The node serving ``slot`` now."""
        with self.client() as c:
            node = c.nodes_manager.get_node_from_slot(slot)
            port = int(node.port)
        return next(n for n in self.nodes if n.port == port)

    def replica_of(self, master: ClusterNodeProc) -> ClusterNodeProc:
        """The node that replicates ``master`` now."""
        with master.client() as c:
            me = c.execute_command("CLUSTER", "MYID")
            nodes = c.cluster("nodes")
        port = next(
            int(addr.split(":")[1].split("@")[0])
            for addr, n in nodes.items()
            if n.get("master_id") == me
        )
        return next(n for n in self.nodes if n.port == port)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        self._tmp.cleanup()


def _node_port(taken: set[int]) -> int:
    """A loopback port that is free, with its cluster bus port (port + 10000) free too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 30000)
        if port in taken:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


def _ping(node: ClusterNodeProc) -> bool:
    try:
        with node.client() as c:
            return bool(c.ping())
    except redis.RedisError:
        return False


def types_on_masters(cluster: RedisClusterProcs, count: int, stem: str = "t") -> list[str]:
    """``count`` agent types whose hash tags hash to slots on ``count`` different masters
    (``stem0``, ``stem1``, ...: the first names that do)."""
    from redis.crc import key_slot

    with cluster.client() as c:
        owner = {s: c.nodes_manager.get_node_from_slot(s).name for s in range(16384)}
    found: dict[str, str] = {}
    n = 0
    while len(found) < count:
        name = f"{stem}{n}"
        master = owner[key_slot(name.encode())]
        if master not in found.values():
            found[name] = master
        n += 1
    return list(found)


def types_spread(cluster: RedisClusterProcs, per_master: int, stem: str = "t") -> list[str]:
    """``per_master`` agent types on each master (``stem0``, ``stem1``, ...: the first
    names that fill each master's share), in turn by master: ``[m0, m1, m2, m0, ...]``."""
    from redis.crc import key_slot

    with cluster.client() as c:
        owner = {s: c.nodes_manager.get_node_from_slot(s).name for s in range(16384)}
    masters = sorted(set(owner.values()))
    found: dict[str, list[str]] = {m: [] for m in masters}
    n = 0
    while any(len(names) < per_master for names in found.values()):
        name = f"{stem}{n}"
        names = found[owner[key_slot(name.encode())]]
        if len(names) < per_master:
            names.append(name)
        n += 1
    return [found[m][i] for i in range(per_master) for m in masters]


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterProcs]:
    """A running Redis Cluster of 3 masters with a replica each (shared by the module)."""
    cluster = RedisClusterProcs()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
