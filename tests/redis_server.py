"""A private ``redis-server`` per test, on a free loopback port, stopped at teardown.

Servers persist with ``appendonly yes`` / ``appendfsync everysec`` in a private directory
(as hubvisor's durable work asks of a production Redis), so a killed and restarted server
comes back with what it had written; ``appendfsync=None`` runs one that persists nothing.

Import the fixtures into a test module with
``from .redis_server import redis_server, redis_server_factory``. The fixtures are
function-scoped, so the leak check of ``conftest.py`` runs after the server is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProc:
    """A ``redis-server`` process on a loopback port: a fresh client, SIGKILL, stop, each
    reaping it. Subclasses set ``port`` and ``proc`` and start it their own way."""

    port: int
    proc: subprocess.Popen[bytes] | None = None
    password: str | None = None

    ca: str | None = None  # a TLS server's certificate: clients then use TLS

    def client(self) -> redis.Redis:
        """A fresh client (decoded strings), for checking what the hub wrote."""
        tls: dict[str, object] = {"ssl": True, "ssl_ca_certs": self.ca} if self.ca else {}
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            decode_responses=True,
            socket_timeout=5,
            **tls,  # type: ignore[arg-type]
        )

    def kill(self) -> None:
        """SIGKILL it (an abrupt outage) and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        """Stop it for good (SIGCONT first, in case it was paused) and reap it."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - redis stops on SIGTERM
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class RedisServer(ServerProc):
    """One ``redis-server`` process that a test can stop, kill, pause and restart."""

    def __init__(
        self, password: str | None = None, tls: bool = False, appendfsync: str | None = "everysec"
    ) -> None:
        if not os.path.exists(REDIS_SERVER):
            pytest.skip("redis-server is not installed (.ci/run installs it)")
        self.port = free_port()
        self.password = password
        self.appendfsync = appendfsync  # None: no persistence at all
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.ca: str | None = None
        # The append-only file lives here, so a restarted server has what was written.
        self._data = tempfile.TemporaryDirectory(prefix="hubvisor-redis-data-")
        if tls:
            if shutil.which("openssl") is None:
                pytest.skip("openssl is needed to make a TLS certificate")
            self._tmp = tempfile.TemporaryDirectory(prefix="hubvisor-redis-tls-")
            self.ca = os.path.join(self._tmp.name, "cert.pem")
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                 "-keyout", os.path.join(self._tmp.name, "key.pem"), "-out", self.ca,
                 "-days", "1", "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True,
                capture_output=True,
            )  # fmt: skip

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:<port>/0`` (``rediss://...`` with TLS)."""
        auth = f":{self.password}@" if self.password else ""
        if self.ca is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port) and wait until it answers PING."""
        assert self.proc is None, "already running"
        if self.ca is not None and self._tmp is not None:  # TLS only
            key = os.path.join(self._tmp.name, "key.pem")
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            ports += ["--tls-cert-file", self.ca, "--tls-key-file", key]
            ports += ["--tls-ca-cert-file", self.ca]
        else:
            ports = ["--port", str(self.port)]
        argv = [
            REDIS_SERVER,
            *ports,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            self._data.name,
            *(
                ["--appendonly", "no"]
                if self.appendfsync is None
                else ["--appendonly", "yes", "--appendfsync", self.appendfsync]
            ),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as c:
                    if c.ping():
                        return
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def pause(self) -> None:
        """SIGSTOP it: connections stay open but nothing is answered (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT it after :meth:`pause`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop it and delete its TLS files."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._data.cleanup()


@pytest.fixture
def redis_server_factory() -> Iterator[type[RedisServer]]:
    """Start servers with ``redis_server_factory(password=...)``; all stop at teardown."""
    started: list[RedisServer] = []

    class Factory(RedisServer):
        def __init__(
            self,
            password: str | None = None,
            tls: bool = False,
            appendfsync: str | None = "everysec",
        ) -> None:
            super().__init__(password, tls, appendfsync)
            started.append(self)
            self.start()

    yield Factory
    for server in started:
        server.close()


@pytest.fixture
def redis_server(redis_server_factory: type[RedisServer]) -> RedisServer:
    """A running private redis-server without a password."""
    return redis_server_factory()
