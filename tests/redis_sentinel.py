"""One Redis master, one replica and 3 Sentinels: real ``redis-server`` processes on free
loopback ports, for the Sentinel and failover tests.

The topology is module-scoped (starting it and letting the Sentinels find each other
costs seconds): import ``sentinels`` into a test module; each test then asks for
``sentinel_env``, which waits until the topology is whole again (a master the 3 Sentinels
agree on, a replica linked to it; a server a test killed is restarted as a replica) and
empties the master. Its processes carry their own test-run marker (``-module``), not the
one ``conftest.py`` checks after each test: they outlive a test on purpose. They die with
pytest (``PR_SET_PDEATHSIG``), and the module's teardown stops and reaps every one, then
checks that none is left.

Servers persist nothing (``--save '' --appendonly no``): a failover is what these tests
are about, not a restart.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from .redis_server import REDIS_SERVER, ServerProc, free_port

MASTER = "mymaster"
DOWN_AFTER_MS = 1000  # a master silent this long is down for a Sentinel
FAILOVER_TIMEOUT_MS = 5000


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: pytest gone, the server goes too


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["HUBVISOR_TEST_RUN"] = env.get("HUBVISOR_TEST_RUN", "") + "-module"
    return env


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it is truthy (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} ({last!r})")
        time.sleep(0.05)


class Node(ServerProc):
    """One ``redis-server`` process (a data node or a Sentinel) on a fixed port."""

    def __init__(self, directory: Path, name: str, sentinel: bool = False) -> None:
        self.port = free_port()
        self.name = name
        self.sentinel = sentinel
        self.dir = directory / name
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str]) -> None:
        assert self.proc is None, f"{self.name} is running"
        self.proc = subprocess.Popen(
            argv,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_env(),
            preexec_fn=_die_with_parent,
        )

        def pong() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log_tail()}")
            with self.client() as c:
                return bool(c.ping())

        wait_until(pong, 10, f"{self.name} on port {self.port} to answer PING")

    def log_tail(self) -> str:
        path = self.dir / "log.txt"
        return path.read_text()[-2000:] if path.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class SentinelTopology:
    """Two data nodes (one master, one replica at first) and 3 Sentinels monitoring
    :data:`MASTER` with quorum 2."""

    def __init__(self, directory: Path) -> None:
        self.nodes = [Node(directory, "node-a"), Node(directory, "node-b")]
        self.sentinels = [Node(directory, f"sentinel-{i}", sentinel=True) for i in range(3)]

    # --- addresses

    @property
    def sentinel_urls(self) -> str:
        """``redis://127.0.0.1:P,...``: what ``--redis`` takes with ``--redis-sentinel``."""
        return ",".join(f"redis://127.0.0.1:{s.port}" for s in self.sentinels)

    def url(self, db: int = 0) -> str:
        """``redis+sentinel://127.0.0.1:P,.../mymaster/DB``."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}/{db}"

    def _data_argv(self, node: Node, master: Node | None) -> list[str]:
        argv = [REDIS_SERVER, "--port", str(node.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(node.dir)]
        argv += ["--logfile", str(node.dir / "log.txt"), "--loglevel", "notice"]
        argv += ["--daemonize", "no", "--repl-diskless-sync", "yes"]
        argv += ["--repl-diskless-sync-delay", "0"]
        if master is not None:
            argv += ["--replicaof", "127.0.0.1", str(master.port)]
        return argv

    def _sentinel_argv(self, node: Node, master: Node) -> list[str]:
        conf = node.dir / "sentinel.conf"
        conf.write_text(
            f"port {node.port}\nbind 127.0.0.1\ndaemonize no\n"
            f"dir {node.dir}\nlogfile {node.dir / 'log.txt'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        return [REDIS_SERVER, str(conf), "--sentinel"]

    # --- life

    def start(self) -> None:
        first, second = self.nodes
        first.start(self._data_argv(first, None))
        second.start(self._data_argv(second, first))
        for s in self.sentinels:
            s.start(self._sentinel_argv(s, first))
        self.wait_whole(60)

    def close(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.stop()
        left = [n.name for n in [*self.sentinels, *self.nodes] if n.running]
        assert not left, f"servers left running: {left}"

    # --- state

    def master_port(self) -> int:
        """The master's port, as every Sentinel says (raises while they disagree)."""
        seen = set()
        for s in self.sentinels:
            with s.client() as c:
                _host, port = c.sentinel_get_master_addr_by_name(MASTER)
                seen.add(int(port))
        if len(seen) != 1:
            raise redis.ConnectionError(f"the Sentinels disagree on the master: {seen}")
        return seen.pop()

    def master(self) -> Node:
        port = self.master_port()
        return next(n for n in self.nodes if n.port == port)

    def replica(self) -> Node:
        port = self.master_port()
        return next(n for n in self.nodes if n.port != port)

    def _whole(self) -> bool:
        master = self.master()
        with master.client() as c:
            info = c.info("replication")
        if info["role"] != "master" or info.get("connected_slaves", 0) < 1:
            return False
        replica = self.replica()
        with replica.client() as c:
            rinfo = c.info("replication")
        if rinfo["role"] != "slave" or rinfo.get("master_link_status") != "up":
            return False
        for s in self.sentinels:
            with s.client() as c:
                state = c.sentinel_master(MASTER)
                replicas = c.sentinel_slaves(MASTER)
            if state["is_sdown"] or state["is_odown"] or state["num-other-sentinels"] < 2:
                return False
            ok = [
                r
                for r in replicas
                if int(r["port"]) == replica.port and not r["is_sdown"]
                and r.get("master-link-status", "ok") == "ok"
            ]  # fmt: skip
            if not ok:
                return False
        return True

    def wait_whole(self, timeout: float = 60) -> None:
        """Restart a data node a test killed (as the master's replica) and wait until the
        Sentinels agree on the master and see the replica linked to it."""
        down = [n for n in self.nodes if not n.running]
        if len(down) == 2:
            raise AssertionError("both data nodes are down: the topology cannot heal")
        if down:  # after a failover: the Sentinels name the node that is up

            def promoted() -> int | None:
                port = self.master_port()
                return port if port != down[0].port else None

            port = wait_until(promoted, timeout, "the Sentinels to promote the replica")
            master = next(n for n in self.nodes if n.port == port)
            node = down[0]
            node.start(self._data_argv(node, master))
        wait_until(self._whole, timeout, "a master, its linked replica and 3 Sentinels")

    def kill_master(self) -> Node:
        """SIGKILL the master (the Sentinels promote the replica); the killed node."""
        port = wait_until(self.master_port, 30, "the Sentinels to agree on a master")
        node = next(n for n in self.nodes if n.port == port)
        node.kill()
        return node


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelTopology]:
    """The module's master, replica and 3 Sentinels; stopped and reaped at its end."""
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    with tempfile.TemporaryDirectory(prefix="hubvisor-sentinel-") as tmp:
        topology = SentinelTopology(Path(tmp))
        try:
            topology.start()
            yield topology
        finally:
            topology.close()


@pytest.fixture
def sentinel_env(sentinels: SentinelTopology) -> Iterator[SentinelTopology]:
    """The module's topology, whole and empty for this test."""
    sentinels.wait_whole()
    with sentinels.master().client() as c:
        c.flushall()
    yield sentinels
