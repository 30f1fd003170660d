"""Control-socket fuzzing: any bytes, any line length, any JSON shape leave the hub answering."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings, strategies as st

from supervisor import PoolSpec, SupervisorSpec
from supervisor.control.ops import OPS
from supervisor.control.server import serve_control
from tests.helpers import TIMEOUT, running, sleeper

SAFE_OPS = sorted(name for name in OPS if name != "stop")  # a fuzzed stop would end the hub

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["", "solo", "w", "list", "count"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def harmless(value: Any) -> Any:
    """No fuzzed request may name a real child or pool: strings get a prefix."""
    if isinstance(value, str):
        return f"ghost-{value}"
    if isinstance(value, list):
        return [harmless(v) for v in value]
    if isinstance(value, dict):
        return {k: harmless(v) for k, v in value.items()}
    return value


requests = st.fixed_dictionaries(
    {"op": st.sampled_from([*SAFE_OPS, "nope", ""]) | json_values},
    optional={
        name: json_values.map(harmless)
        for name in ("id", "lines", "pool", "size", "request", "extra")
    },
)

lines = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    requests.map(lambda r: json.dumps(r).encode()),
    # Long lines: a short pattern repeated, up to three times the 64 KiB line limit.
    st.tuples(
        st.sampled_from([b"[", b"{", b'"', b"x", b"\xff", b" ", b"[1,"]), st.integers(0, 200_000)
    ).map(lambda t: t[0] * t[1]),
)
payloads = st.lists(lines, max_size=4).map(b"\n".join)

VALID = b'{"op": "count"}\n'


def exchange(path: Path, data: bytes) -> list[bytes]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
    return received.splitlines()


def tree() -> SupervisorSpec:
    return SupervisorSpec(
        name="hub",
        children=[sleeper("solo"), PoolSpec(agent_type="w", template=sleeper("t"), size=1)],
    )


async def test_fuzzed_control_lines_leave_the_hub_answering(tmp_path: Path) -> None:
    """Whatever comes before it on a connection, a valid request gets its answer.

    Every answer is a JSON object with a boolean ``ok``; the hub never goes down.
    """
    path = tmp_path / "hub.sock"
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)
        expected = {"ok": True, "result": hub.count_children()}

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(payload=payloads)
        def fuzz(payload: bytes) -> None:
            answers = [json.loads(a) for a in exchange(path, payload + b"\n" + VALID)]

            assert answers, "no answer at all"
            assert all(isinstance(a, dict) and isinstance(a["ok"], bool) for a in answers)
            assert expected == answers[-1]

        await trio.to_thread.run_sync(fuzz)

        assert expected == {"ok": True, "result": hub.count_children()}
        nursery.cancel_scope.cancel()


async def test_fuzzed_chunking_of_one_connection(tmp_path: Path) -> None:
    """Requests split at any byte, with bad lines among them, are answered in order."""
    path = tmp_path / "hub.sock"
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)

        @settings(max_examples=60, deadline=None)
        @given(
            pieces=st.lists(
                st.sampled_from([VALID, b"{bad\n", b"\n", b"[" * 70_000 + b"\n"]),
                min_size=1,
                max_size=6,
            ),
            cuts=st.lists(st.integers(1, 4096), max_size=8),
        )
        def fuzz(pieces: list[bytes], cuts: list[int]) -> None:
            data = b"".join(pieces)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(TIMEOUT)
                sock.connect(str(path))
                at = 0
                for cut in cuts:
                    sock.sendall(data[at : at + cut])
                    at += cut
                sock.sendall(data[at:])
                sock.shutdown(socket.SHUT_WR)
                received = b""
                while chunk := sock.recv(1 << 20):
                    received += chunk
            oks = [json.loads(a)["ok"] for a in received.splitlines()]

            assert [p == VALID for p in pieces if p != b"\n"] == oks

        await trio.to_thread.run_sync(fuzz)
        nursery.cancel_scope.cancel()
