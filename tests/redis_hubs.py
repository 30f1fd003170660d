"""Real ``hubvisor run`` processes, alone (the SQLite store) or sharing one real
``redis-server``, for the durable-work tests: start, SIGKILL, SIGSTOP/SIGCONT and stop
hubs; submit through their control sockets; read the record (the per-type ``log``
stream) straight from Redis.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from supervisor.control.client import request

from . import raw_agent

HUBVISOR = str(Path(sys.executable).with_name("hubvisor"))

SPEC = f"""
from supervisor import ChildSpec, PoolSpec
from strategies import Intensity
tree = [
    PoolSpec(
        agent_type="{{type}}",
        size={{size}},
        template=ChildSpec(
            id="{{type}}", argv={raw_agent.argv("--who")!r}, agent_type="{{type}}",
            heartbeat_timeout=10.0, shutdown=2.0,
        ),
        intensity=Intensity(max_restarts=1000, window=1.0),
    )
]
"""


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    """Poll ``predicate`` (OS or Redis state, which sends no events) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.05)


class HubProc:
    """One ``hubvisor run`` process (``--redis`` when given a URL) with its own control
    socket."""

    def __init__(
        self,
        tmp: Path,
        hub_id: str,
        url: str | None,
        *,
        size: int = 2,
        lease: float = 1.5,
        agent_type: str = "w",
        spec: str | None = None,
        args: tuple[str, ...] = (),
        call_timeout: float = 10.0,
    ):
        """``url``: the Redis the hub shares (``None``: its own store, the SQLite default,
        unless ``args`` say otherwise); ``spec``: the spec file's text (default: a pool of
        ``size`` raw agents of ``agent_type``); ``args``: more ``hubvisor run`` arguments."""
        self.hub_id = hub_id
        self.url = url
        self.lease = lease
        self.args = args
        self.call_timeout = call_timeout
        if spec is None:
            self.spec = tmp / f"spec-{agent_type}-{size}.py"
            spec = SPEC.replace("{size}", str(size)).replace("{type}", agent_type)
        else:
            self.spec = tmp / f"spec-{hub_id}.py"
        self.spec.write_text(spec)
        self.socket = tmp / f"{hub_id}.sock"
        self.log = tmp / f"{hub_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HubProc:
        argv = [HUBVISOR, "run", str(self.spec), "--hub-id", self.hub_id]
        if self.url is not None:
            argv += ["--redis", self.url, "--lease", str(self.lease)]
        argv += ["--socket", str(self.socket), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        wait_for(self._ready, 60, f"hub {self.hub_id} to serve with its agents running")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"hub {self.hub_id} exited:\n{self.log.read_text()[-3000:]}")
        try:
            status = self.call("status")
        except Exception:
            return False
        return bool(status["agents"]) and all(a["status"] != "starting" for a in status["agents"])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def call(self, op: str, **args: Any) -> Any:
        return request(self.socket, {"op": op, **args}, self.call_timeout)

    def submit(self, payload: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.call("submit", type="w", payload=payload)
        return result

    def agent_pids(self) -> list[int]:
        return [a["pid"] for a in self.call("status")["agents"] if a["pid"]]

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def record(client: redis.Redis, agent_type: str = "w") -> list[dict[str, str]]:
    """Every final outcome written for ``agent_type``, in order."""
    rows = client.xrange(f"hubvisor:work:{{{agent_type}}}:log")
    return [{str(k): str(v) for k, v in fields.items()} for _id, fields in rows]


def outcomes(client: redis.Redis) -> Counter[str]:
    """How many final outcomes each item has in the record (each must have exactly one)."""
    return Counter(row["item"] for row in record(client))


def item(client: redis.Redis, item_id: str) -> dict[str, Any]:
    raw = client.hgetall(f"hubvisor:work:{{w}}:item:{item_id}")
    fields: dict[str, Any] = {str(k): str(v) for k, v in raw.items()}
    if fields.get("result"):
        fields["result"] = json.loads(fields["result"])
    return fields
