"""Regression tests for the control-socket, metrics and CLI faults of issue 18.

Fault 1 (client side: text from the hub and from clients made safe), 5 (bounded control
and metrics connections), 13 (NaN and Infinity refused), 14 (``events -n N``) and 15
(one-line errors on Python 3.11.0-3.11.3).
"""

from __future__ import annotations

import ast
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from click.testing import CliRunner

from supervisor import ChildRunning, ConfigError, Hub, PoolSpec, SupervisorSpec, WorkFailed
from supervisor._cli import main
from supervisor._metrics import MetricsService
from supervisor.control.client import ControlClientError, request
from supervisor.control.events import EventRing
from supervisor.control.ops import ControlLimits
from supervisor.control.server import serve_control
from tests.control.test_cli import finish, start_hubvisor
from tests.control.test_commands import cli
from tests.control.test_errors_and_paths import exchange
from tests.helpers import TIMEOUT, running, sleeper, until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def tree() -> SupervisorSpec:
    return SupervisorSpec(
        name="hub",
        children=[sleeper("solo"), PoolSpec(agent_type="w", template=sleeper("t"), size=2)],
    )


async def ask(path: Path, req: dict[str, Any]) -> Any:
    return await trio.to_thread.run_sync(request, path, req)


# --------------------------------------------------------------------------------------
# Fault 14: `events -n N` returned too few when fewer than N events were kept


@pytest.mark.parametrize(
    ("lines", "shown"), [(6, [0, 1, 2, 3]), (4, [0, 1, 2, 3]), (3, [1, 2, 3]), (0, [])]
)
async def test_fault14_events_n_gives_the_last_n_kept_or_all_of_them(
    tmp_path: Path, lines: int, shown: list[int]
) -> None:
    """With 4 events kept, ``events -n 6`` prints all 4 (it printed 2), ``-n 3`` the last 3."""
    hub = Hub(tree())
    ring = EventRing(keep=4)
    for n in range(4):
        ring.kept.append((ChildRunning(at=0.0, supervisor="hub", child_id=f"c{n}", pid=n), 0.0))
    path = tmp_path / "hub.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_control, hub, path, events=ring))

        result = await trio.to_thread.run_sync(
            lambda: CliRunner().invoke(main, ["events", "-n", str(lines), "--socket", str(path)])
        )

        assert 0 == result.exit_code, result.output
        assert shown == [json.loads(line)["pid"] for line in result.stdout.splitlines()]
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------------------
# Fault 15: a 43-line ExceptionGroup instead of one line on Python 3.11.0-3.11.3


def _raises_in_except_star(tree_: ast.AST) -> list[int]:
    """Line numbers of ``raise`` statements inside the handlers of ``try ... except*``."""
    found = []
    for node in ast.walk(tree_):
        if isinstance(node, ast.TryStar):
            for handler in node.handlers:
                for inner in ast.walk(handler):
                    if isinstance(inner, ast.Raise):
                        found.append(inner.lineno)
    return found


def test_fault15_ast_check_finds_a_raise_inside_except_star() -> None:
    """The check below does see the pattern (so its silence means something)."""
    code = "try:\n    f()\nexcept* ValueError as g:\n    if g:\n        raise KeyError\n"

    assert [5] == _raises_in_except_star(ast.parse(code))


def test_fault15_no_raise_inside_an_except_star_block() -> None:
    """No exception is raised inside ``except*`` anywhere: on 3.11.0-3.11.3 (CPython
    gh-103590) it comes out wrapped in the group it replaced, a traceback for the user."""
    offenders = []
    for package in ("supervisor", "agents", "strategies"):
        for source in sorted((ROOT / package).rglob("*.py")):
            lines = _raises_in_except_star(ast.parse(source.read_text(), str(source)))
            offenders += [f"{source.relative_to(ROOT)}:{n}" for n in lines]

    assert [] == offenders


SPEC15 = """
from supervisor import ChildSpec, SupervisorSpec
spec = SupervisorSpec(
    name="hub15", children=[ChildSpec(id="a", argv=["sleep", "1000"], shutdown=2, start_period=0.1)]
)
"""


def _pythons() -> list[Any]:
    """This interpreter, and Debian 12's python3 (3.11.2, which has the CPython bug) when
    the machine has it: the hub's pure-Python dependencies are found on this one's path."""
    found: list[Any] = [pytest.param([sys.executable], id="this-python")]
    debian = Path("/usr/bin/python3.11")
    if debian.exists():
        version = subprocess.run(
            [str(debian), "-c", "import sys; print(sys.version_info[:3] < (3, 11, 4))"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if version == "True":
            found.append(pytest.param([str(debian)], id="python-3.11.2"))
    return found


def _run15(python: list[str], tmp_path: Path, env: dict[str, str], *args: str) -> Any:
    spec = tmp_path / "tree.py"
    spec.write_text(SPEC15)
    paths = [str(ROOT), *(p for p in sys.path if p.endswith("site-packages"))]
    return subprocess.run(
        [*python, "-m", "supervisor", "run", str(spec), "--duration", "5", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(paths)},
    )


@pytest.mark.parametrize("python", _pythons())
def test_fault15_taken_socket_is_one_line_and_exit_1(python: list[str], tmp_path: Path) -> None:
    """`run` with another hub listening at the socket: one line, exit 1 (docs/control.md)."""
    path = tmp_path / "hub.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen(1)

        result = _run15(python, tmp_path, {}, "--socket", str(path))

    assert 1 == result.returncode
    assert [f"Error: another hub is already listening at {path}"] == [
        line[: len(f"Error: another hub is already listening at {path}")]
        for line in result.stderr.splitlines()
    ], result.stderr


@pytest.mark.parametrize("python", _pythons())
def test_fault15_unsafe_directory_is_one_line_and_exit_1(python: list[str], tmp_path: Path) -> None:
    """`run` refusing a default socket directory others may write: one line, exit 1."""
    base = tmp_path / f"hubvisor-{os.getuid()}"
    base.mkdir()
    base.chmod(0o777)
    env = {"TMPDIR": str(tmp_path), "XDG_RUNTIME_DIR": ""}

    result = _run15(python, tmp_path, env)

    assert 1 == result.returncode
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: the control directory {base} has mode 0777"), line
    assert "chmod 700" in line


# --------------------------------------------------------------------------------------
# Fault 13: NaN and Infinity were queued, sent in ASSIGN, and printed as invalid JSON


def strict_json(text: str) -> Any:
    """Decode ``text`` as JSON proper: NaN, Infinity and -Infinity are refused."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in output that must be JSON: {text[:200]!r}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("payload", ["NaN", '{"x": Infinity}', "[-Infinity]", '{"n": 1e999}'])
async def test_fault13_submit_of_nan_or_infinity_is_refused_on_the_cli(
    tmp_path: Path, payload: str
) -> None:
    """`hubvisor submit w 'NaN'` is a usage error naming the value; nothing is queued."""
    path = tmp_path / "hub.sock"
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)

        result = await trio.to_thread.run_sync(
            lambda: CliRunner().invoke(main, ["submit", "w", payload, "--socket", str(path)])
        )

        assert 2 == result.exit_code, result.output
        assert "is not JSON" in result.output and "Infinity" in result.output
        assert [] == hub.work.items()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b'{"a": [NaN]}'])
async def test_fault13_nan_or_infinity_on_the_control_socket_is_an_error_answer(
    tmp_path: Path, value: bytes
) -> None:
    """A raw request carrying NaN/Infinity anywhere is answered with an error saying so;
    the connection goes on and nothing is queued."""
    path = tmp_path / "hub.sock"
    line = b'{"op": "submit", "type": "w", "payload": ' + value + b"}\n"
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)

        refused, after = await trio.to_thread.run_sync(exchange, path, line + b'{"op": "count"}\n')

        assert not refused["ok"]
        assert "is not JSON" in refused["error"] and "Infinity" in refused["error"]
        assert after["ok"]
        assert [] == hub.work.items()
        nursery.cancel_scope.cancel()


def test_fault13_the_python_client_refuses_to_send_nan(tmp_path: Path) -> None:
    """request() with a NaN says so before connecting anywhere useful."""
    path = tmp_path / "hub.sock"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        listening.listen(1)

        with pytest.raises(ControlClientError, match="'submit' request holds NaN or Infinity"):
            request(path, {"op": "submit", "type": "w", "payload": float("nan")})


async def test_fault13_work_show_json_is_valid_json_whatever_the_item_holds(
    tmp_path: Path,
) -> None:
    """An item holding a non-finite float (from before the fix, or any other path) is
    shown by `work show --json` and `work list --json` as valid JSON: its name, a string."""
    path = tmp_path / "hub.sock"
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)
        item = hub.work.submit("w", {"n": 1})
        item.result = {"score": float("nan"), "range": [float("-inf"), float("inf")]}

        shown = await cli(path, "work", "show", item.id, "--json")
        listed = await cli(path, "work", "list", "--json")

        assert 0 == shown.exit_code, shown.output
        expected = {"score": "NaN", "range": ["-Infinity", "Infinity"]}
        assert expected == strict_json(shown.stdout)["result"]
        assert [expected] == [i["result"] for i in strict_json(listed.stdout)]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("op", ["work_show", "events"])
async def test_fault13_an_answer_with_nan_from_an_older_hub_prints_valid_json(
    tmp_path: Path, op: str
) -> None:
    """The client keeps a NaN or Infinity a hub sends as its name, so ``--json`` (and a
    stream's JSON lines) stay JSON."""
    path = tmp_path / "fake.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(4)
    value = b'{"id": "w-1", "result": NaN, "big": 1e999, "low": -Infinity}'
    answer = (
        b'{"ok": true, "result": ' + value + b"}\n"
        if op == "work_show"
        else b'{"ok": true, "item": ' + value + b'}\n{"ok": true, "end": true}\n'
    )

    async def older_hub(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(answer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, older_hub, [trio.SocketListener(sock)])
        args = ["work", "show", "w-1", "--json"] if op == "work_show" else ["events", "--json"]

        result = await cli(path, *args)

        assert 0 == result.exit_code, result.output
        expected = {"id": "w-1", "result": "NaN", "big": "1e999", "low": "-Infinity"}
        assert expected == strict_json(result.stdout)
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------------------
# Fault 1 (client and control socket): a lone surrogate crashed every printer


LONE = "lint failed in caf\udcff.py"  # a Latin-1 file name read with surrogateescape
SAFE = "lint failed in caf\ufffd.py"


async def test_fault1_control_requests_with_lone_surrogates_are_made_safe(
    tmp_path: Path,
) -> None:
    """A request holding ``\\udcff`` (a JSON escape) is answered, never crashes the
    connection, and what the hub keeps from it encodes as UTF-8."""
    path = tmp_path / "hub.sock"
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        await nursery.start(serve_control, hub, path)
        lines = [
            json.dumps({"op": "logs", "id": LONE}),  # an error that names the value
            json.dumps({"op": "submit", "type": "w", "payload": {LONE: [LONE]}}),
            json.dumps({"op": "\udcff"}),
            '{"op": "count"}',
        ]

        answers = await trio.to_thread.run_sync(exchange, path, "\n".join(lines).encode() + b"\n")

        assert 4 == len(answers), answers
        assert not answers[0]["ok"] and SAFE in answers[0]["error"]
        assert answers[1]["ok"]
        assert not answers[2]["ok"] and "unknown op '\ufffd'" in answers[2]["error"]
        assert answers[3]["ok"]
        (item,) = hub.work.items()
        assert {SAFE: [SAFE]} == item.payload
        json.dumps(item.to_json(), ensure_ascii=False).encode()  # encodes: no surrogate left
        nursery.cancel_scope.cancel()


def hubvisor(*args: str) -> subprocess.CompletedProcess[str]:
    """``hubvisor ARGS`` as a real process whose stdout is strict UTF-8 (a pipe, as in a
    script or CI log), the way the crash was seen."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="strict",
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    "args",
    [
        ["work", "list"],
        ["work", "list", "--json"],
        ["work", "show", "{id}"],
        ["work", "show", "{id}", "--json"],
        ["events"],
        ["events", "--json"],
    ],
)
async def test_fault1_printing_an_item_whose_error_holds_a_lone_surrogate(
    tmp_path: Path, args: list[str]
) -> None:
    """`work list`, `work show`, `events` and their --json print text with lone
    surrogates (sent by an agent, kept by the hub) as U+FFFD instead of crashing."""
    path = tmp_path / "hub.sock"
    async with running(tree()) as (hub, _), trio.open_nursery() as nursery:
        ring = EventRing()
        await nursery.start(functools.partial(serve_control, hub, path, events=ring))
        item = hub.work.submit("w", {"n": 1})
        item.error = LONE  # what an agent's FAIL left before the boundary was made safe
        item.progress = {"file": LONE}
        failed = WorkFailed(
            at=0.0,
            supervisor="hub",
            child_id="w",
            item_id=item.id,
            attempt=1,
            error=LONE,
            final=True,
        )
        ring.kept.append((failed, time.time()))
        argv = [a.format(id=item.id) for a in args]

        result = await trio.to_thread.run_sync(lambda: hubvisor(*argv, "--socket", str(path)))

        assert 0 == result.returncode, result.stderr
        assert "Traceback" not in result.stderr
        assert "\ufffd" in result.stdout or "\\ufffd" in result.stdout
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------------------
# Fault 5: no bound on control-socket or metrics connections


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def read_line(stream: trio.abc.ReceiveStream) -> tuple[dict[str, Any] | None, float]:
    """The next answer line of ``stream`` (``None``: closed before one), and when it came."""
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None, trio.current_time()
        data += chunk
    return json.loads(data.split(b"\n", 1)[0]), trio.current_time()


async def test_fault5_control_flood_holds_at_most_the_cap_and_idle_ones_time_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """100 idle connections on a cap of 4: the hub holds at most 4 of them (the rest are
    told it is busy and closed at once); the 4 close after the idle timeout, and a normal
    request then succeeds."""
    limits = ControlLimits(max_connections=4, idle_timeout=10.0, request_timeout=5.0)
    path = tmp_path / "hub.sock"
    hub = Hub(tree())
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_control, hub, path, limits=limits))
        base = fd_count()
        t0 = trio.current_time()

        flood = [await trio.open_unix_socket(str(path)) for _ in range(100)]
        await trio.testing.wait_all_tasks_blocked()

        assert fd_count() - base - len(flood) <= 4  # the hub's side of them
        answers = [await read_line(s) for s in flood]
        busy = [a for a, _ in answers if a is not None and a.get("busy")]
        idle = [(a, at) for a, at in answers if a is not None and not a.get("busy")]
        assert 96 == len(busy)
        assert "serving 4 control connections, the most it takes at once" in busy[0]["error"]
        assert 4 == len(idle)
        for answer, at in idle:
            assert "no request for 10s" in answer["error"]
            assert 10.0 == pytest.approx(at - t0, abs=0.5)

        async with await trio.open_unix_socket(str(path)) as client:
            await client.send_all(b'{"op": "count"}\n')
            answer, _ = await read_line(client)
        assert answer is not None and answer["ok"], answer
        for s in flood:
            await s.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert fd_count() <= base
        nursery.cancel_scope.cancel()


async def test_fault5_a_request_line_must_arrive_within_the_request_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A client dribbling its request (a piece every 4 s, each under the idle timeout)
    is cut off 5 s after the request began, whatever it sends meanwhile."""
    limits = ControlLimits(max_connections=4, idle_timeout=10.0, request_timeout=5.0)
    path = tmp_path / "hub.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_control, Hub(tree()), path, limits=limits))
        async with await trio.open_unix_socket(str(path)) as slow:
            await trio.sleep(8)  # idle, but under the idle timeout
            began = trio.current_time()
            await slow.send_all(b'{"op": ')
            await trio.sleep(4)
            await slow.send_all(b'"co')  # more bytes do not move the request's deadline
            answer, at = await read_line(slow)

        assert answer is not None and "took over 5s to arrive" in answer["error"]
        assert 5.0 == pytest.approx(at - began, abs=0.5)
        nursery.cancel_scope.cancel()


def test_fault5_limits_are_checked() -> None:
    for bad in ({"max_connections": 0}, {"idle_timeout": 0}, {"request_timeout": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ControlLimits(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_connections must be an int >= 1"):
        MetricsService("127.0.0.1:0", max_connections=0)
    with pytest.raises(ConfigError, match="request_timeout must be seconds > 0"):
        MetricsService("127.0.0.1:0", request_timeout=0)


async def test_fault5_a_real_hub_under_a_connection_flood_keeps_its_fds_and_answers(
    tmp_path: Path,
) -> None:
    """`hubvisor run --control-max-connections 8 --control-idle-timeout 1`, 300 idle
    connections: the hub's fd count grows by at most 8 (it grew by 300), and `hubvisor
    status` during the flood succeeds (it retries the busy hub until a slot frees)."""
    spec = tmp_path / "tree.py"
    spec.write_text(SPEC15)
    path = tmp_path / "hub.sock"
    hub = await start_hubvisor(
        "run", str(spec), "--socket", str(path),
        "--control-max-connections", "8", "--control-idle-timeout", "1",
    )  # fmt: skip
    try:
        await hub.wait_line("hub15 started")
        pid = hub.proc.pid
        base = fd_count(pid)
        flood = []
        try:
            for _ in range(300):
                s = socket.socket(socket.AF_UNIX)
                flood.append(s)
                s.connect(str(path))
            await until(lambda: fd_count(pid) <= base + 8)
            highest = fd_count(pid)

            status = await trio.to_thread.run_sync(hubvisor, "status", "--socket", str(path))

            assert 0 == status.returncode, status.stderr
            assert "hub: hub15" in status.stdout
            assert highest <= base + 8
        finally:
            for s in flood:
                s.close()
    finally:
        hub.proc.send_signal(signal.SIGINT)
        assert 0 == (await finish(hub))[0]


async def test_fault5_metrics_flood_holds_at_most_the_cap_and_answers_503_over_it() -> None:
    """50 idle connections to the metrics port on a cap of 2: the service holds 2 (the
    others get 503 and are closed), and once the idle ones are cut off a scrape works."""
    metrics = MetricsService("127.0.0.1:0", max_connections=2, request_timeout=1.0)
    async with running(
        [PoolSpec(agent_type="w", template=sleeper("w"), size=0)], services=[metrics]
    ):
        base = fd_count()
        flood = [await trio.open_tcp_stream("127.0.0.1", metrics.port) for _ in range(50)]
        try:
            await until(lambda: metrics.connections_refused == 48)
            await until(lambda: fd_count() - base - len(flood) <= 2)  # 50 more before
            over = await flood[-1].receive_some(4096)
            assert over.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            assert b"Retry-After: 1\r\n" in over

            def scrape_until_served() -> int:
                for _ in range(200):
                    status = get_status(metrics.url)
                    if status == 200:
                        return status
                    time.sleep(0.1)
                return status

            assert 200 == await trio.to_thread.run_sync(scrape_until_served)
        finally:
            for s in flood:
                await s.aclose()


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code
