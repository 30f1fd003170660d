"""A local control socket for a running hub, and the client ``hubvisor ctl`` uses.

The hub listens on a Unix stream socket (mode 0600; by default in a private 0700
directory, so only its user can talk to it). Each request is one JSON object on one line;
each answer is one JSON line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
"..."}``. Anything malformed (bytes that are not UTF-8 or JSON, JSON nested too deeply, a
line longer than 64 KiB, unknown ops or fields, values of the wrong type) gets an error
answer; the hub keeps running and the connection stays usable.

The operations are one table, :data:`OPS`: each :class:`Op` names its fields (type,
bounds, help), the :class:`~supervisor.Hub` call that carries it out, how long it may
take, and how ``hubvisor ctl`` prints its result. The socket's dispatch and the ``ctl``
subcommands are both built from it, so adding an operation is adding one entry. See
``docs/control.md``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import click
import trio
from rich import box
from rich.console import Console
from rich.table import Table

from ._errors import ControlError, HubvisorError
from ._hub import Hub
from ._log import logger
from ._spec import BRUTAL_KILL, AnySpec, ChildSpec, PoolSpec

__all__ = [
    "OPS",
    "ControlClientError",
    "Field",
    "Op",
    "default_socket_path",
    "parse_request",
    "request",
    "serve_control",
]

_MAX_LINE = 64 * 1024
"""The longest request line the hub reads; a longer one is answered with an error."""
_MAX_ANSWER = 256 * 1024 * 1024
"""The longest answer the client reads (a ``list`` of a very large tree is a few MiB)."""
FAST_TIMEOUT = 30.0
"""Seconds the client waits for an answer, plus what a slow op may take in the hub."""

Args = Mapping[str, Any]


class ControlClientError(HubvisorError):
    """The control socket could not be reached, or the hub refused the request."""


# --------------------------------------------------------------------------------------
# Where the socket lives


def _default_base() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "hubvisor"
    return Path(tempfile.gettempdir()) / f"hubvisor-{os.getuid()}"


def default_socket_path(hub_id: str) -> Path:
    """``$XDG_RUNTIME_DIR/hubvisor/<hub_id>.sock``, or under ``/tmp/hubvisor-<uid>/``."""
    return _default_base() / f"{hub_id}.sock"


def _check_private_dir(directory: Path, error: type[Exception], option: str) -> None:
    """Refuse a default socket directory someone else could control.

    ``/tmp/hubvisor-<uid>`` can be created by any user before us; a hub or client that
    used it would hand the control socket (or the requests) to that user.
    """
    fix = f"or pass {option} PATH to use a socket elsewhere"
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise error(f"cannot inspect the control directory {directory}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise error(
            f"the control directory {directory} is a symlink, not a private directory; "
            f"remove it (rm {directory}) if you did not make it, {fix}"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise error(
            f"the control directory {directory} is not a directory; remove it (rm {directory}), "
            f"{fix}"
        )
    uid = os.getuid()
    if st.st_uid != uid:
        raise error(
            f"the control directory {directory} belongs to uid {st.st_uid}, not to you "
            f"(uid {uid}): another user could read or answer your control requests; have "
            f"it removed (as root: rm -r {directory}), set XDG_RUNTIME_DIR to a private "
            f"directory, {fix}"
        )
    if st.st_mode & 0o077:
        raise error(
            f"the control directory {directory} has mode {stat.S_IMODE(st.st_mode):04o}; it "
            f"must be private so only you reach the control socket: chmod 700 {directory}, {fix}"
        )


# --------------------------------------------------------------------------------------
# The table of operations


_KIND_NAMES: dict[type, str] = {int: "int", str: "string", dict: "object"}


def _show_value(value: object) -> str:
    """A short description of a request value for an error message (never huge)."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON array"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


@attrs.frozen
class Field:
    """One field of a control request.

    Attributes:
        name: the JSON key, and the ``hubvisor ctl`` argument or option name.
        kind: ``int``, ``str`` or ``dict`` (a JSON object); ``bool`` is never an ``int``.
        help: what the field means (``ctl --help`` shows it).
        example: a valid value, shown in error messages as the fix.
        required: whether a request must carry it (``null`` counts as absent).
        minimum: the smallest value of an ``int`` field.
        flag: the ``ctl`` option for it (e.g. ``"-n"``); without one it is an argument.
        metavar: how ``ctl --help`` names the argument.
    """

    name: str
    kind: type
    help: str
    example: object
    required: bool = True
    minimum: int | None = None
    flag: str | None = None
    metavar: str | None = None

    def describe(self) -> str:
        """E.g. ``an int >= 0``."""
        name = _KIND_NAMES[self.kind]
        text = f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
        if self.minimum is not None:
            text += f" >= {self.minimum}"
        return text

    def check(self, op: Op, value: object) -> object:
        """``value`` if it is valid for this field, else a :class:`ControlError` saying so."""
        ok = isinstance(value, self.kind) and not isinstance(value, bool)
        if ok and self.minimum is not None:
            assert isinstance(value, int)
            ok = value >= self.minimum
        if not ok:
            raise ControlError(
                f"request {op.name!r}: {self.name!r} must be {self.describe()} (got "
                f"{_show_value(value)}); send {self.name!r} as a {self.kind.__name__}, e.g. "
                f"{op.example()}"
            )
        return value


def _echo_result(result: Any, args: Args) -> None:
    click.echo(result)


@attrs.frozen
class Op:
    """One control operation: its fields, its handler on the hub and its ``ctl`` output.

    Attributes:
        name: the request's ``"op"`` and the ``hubvisor ctl`` subcommand.
        help: the subcommand's help text (first line: its summary).
        run: ``run(hub, args, background)`` carries the request out; ``args`` are the
            validated fields; ``background`` is a nursery for work that outlives the answer.
        fields: the request's fields; any other key is refused.
        show: prints the result for ``hubvisor ctl`` (``--json`` prints it raw instead).
        budget: ``budget(hub, args)``, the longest the op may take inside the hub (e.g. a
            child's shutdown time); the client waits that long on top of its own timeout.
            ``None``: the op answers at once.
        command: whether ``hubvisor ctl`` offers it.
    """

    name: str
    help: str
    run: Callable[[Hub, Args, trio.Nursery], Awaitable[Any]]
    fields: tuple[Field, ...] = ()
    show: Callable[[Any, Args], None] = _echo_result
    budget: Callable[[Hub, Args], float] | None = None
    command: bool = True

    def example(self) -> str:
        """A valid request of this op, as JSON."""
        return json.dumps(
            {"op": self.name, **{f.name: f.example for f in self.fields if f.required}}
        )

    def parse(self, req: Mapping[str, Any]) -> dict[str, Any]:
        """The validated fields of ``req`` (``"op"`` removed), or a :class:`ControlError`."""
        known = {f.name for f in self.fields}
        unknown = sorted(str(k) for k in req if k != "op" and k not in known)
        if unknown:
            takes = ", ".join(repr(f.name) for f in self.fields) or "no other field"
            raise ControlError(
                f"request {self.name!r} has no field {_show_value(unknown[0])}; it takes "
                f"{takes}, e.g. {self.example()}"
            )
        args: dict[str, Any] = {}
        for f in self.fields:
            value = req.get(f.name)
            if value is None:
                if f.required:
                    raise ControlError(
                        f"request {self.name!r} needs {f.name!r} ({f.help}): "
                        f"{f.describe()}, e.g. {self.example()}"
                    )
                continue
            args[f.name] = f.check(self, value)
        return args


def parse_request(req: object) -> tuple[Op, dict[str, Any]]:
    """The op and validated arguments of a decoded request, or a :class:`ControlError`."""
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise ControlError(
            f'a request is a JSON object like {{"op": "list"}} (got {_show_value(req)}); '
            f"the ops are {', '.join(OPS)}"
        )
    op = OPS.get(req["op"])
    if op is None:
        raise ControlError(f"unknown op {_show_value(req['op'])}; the ops are {', '.join(OPS)}")
    return op, op.parse(req)


# Handlers ------------------------------------------------------------------------------


def _rows(hub: Hub) -> list[dict[str, Any]]:
    return [
        {
            "supervisor": row.supervisor,
            "id": row.info.id,
            "kind": row.info.kind,
            "state": row.info.state.value,
            "pid": row.info.pid,
            "restarts": row.info.restarts,
            "uptime": row.info.uptime,
            "agent_type": row.info.agent_type,
            "last_exit": row.info.last_exit,
        }
        for row in hub.which_children()
    ]


async def _list(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return _rows(hub)


async def _count(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return hub.count_children()


async def _logs(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    return hub.logs(args["id"], args.get("lines"))


async def _terminate(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    await hub.terminate_child(args["id"])


async def _restart(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    await hub.restart_child(args["id"])


async def _resize(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    await hub.resize(args["pool"], args["size"])


async def _stop(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    background.start_soon(hub.stop)
    return "stopping"


async def _budget(hub: Hub, args: Args, background: trio.Nursery) -> Any:
    op, op_args = parse_request(args["request"])
    return 0.0 if op.budget is None else op.budget(hub, op_args)


# Budgets: how long an op may take inside the hub ----------------------------------------


def _stop_time(spec: AnySpec) -> float:
    """The longest a graceful stop of ``spec`` takes (a supervisor stops in order)."""
    if isinstance(spec, ChildSpec):
        return 0.0 if spec.shutdown == BRUTAL_KILL else float(spec.shutdown)
    if isinstance(spec, PoolSpec):
        return _stop_time(spec.template)  # members stop at once
    return sum(_stop_time(c) for c in spec.children)


def _child_stop_time(hub: Hub, args: Args) -> float:
    owner = hub.owner(args["id"])
    spec = owner.spec
    if isinstance(spec, PoolSpec):
        return _stop_time(spec.template)
    for child in spec.children:
        if child.id == args["id"]:
            return _stop_time(child)
    return _stop_time(hub.spec)  # started at run time: the whole tree bounds it


def _pool_stop_time(hub: Hub, args: Args) -> float:
    spec = hub.supervisor(args["pool"]).spec
    return _stop_time(spec.template) if isinstance(spec, PoolSpec) else 0.0


# How ctl prints results -----------------------------------------------------------------


def _show_list(rows: Any, args: Args) -> None:
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("supervisor", "id", "state", "pid", "restarts", "uptime", "last exit"):
        table.add_column(col, justify="right" if col in ("pid", "restarts", "uptime") else "left")
    for r in rows:
        table.add_row(
            r["supervisor"],
            r["id"],
            r["state"],
            str(r["pid"] or "-"),
            str(r["restarts"]),
            f"{r['uptime']:.1f}s" if r["uptime"] is not None else "-",
            r["last_exit"] or "",
        )
    Console(width=200).print(table)


def _show_count(counts: Any, args: Args) -> None:
    for key, value in counts.items():
        click.echo(f"{key}: {value}")


def _show_lines(lines: Any, args: Args) -> None:
    for line in lines:
        click.echo(line)


def _said(word: str) -> Callable[[Any, Args], None]:
    def show(result: Any, args: Args) -> None:
        click.echo(f"{args['id']}: {word}")

    return show


def _show_resize(result: Any, args: Args) -> None:
    click.echo(f"{args['pool']}: {args['size']} members")


_CHILD_ID = Field(
    "id",
    str,
    "the child's id, as `hubvisor ctl list` shows it",
    "worker-agent-1",
    metavar="CHILD_ID",
)

OPS: dict[str, Op] = {
    op.name: op
    for op in [
        Op(
            "list",
            "List every child: supervisor, id, state, pid, restarts, uptime, last exit.",
            _list,
            show=_show_list,
        ),
        Op(
            "count",
            "Count children: specs, active, workers, supervisors.",
            _count,
            show=_show_count,
        ),
        Op(
            "logs",
            "Print a child's recent output lines.",
            _logs,
            fields=(
                _CHILD_ID,
                Field(
                    "lines", int, "only the last N lines", 20, required=False, minimum=0, flag="-n"
                ),
            ),
            show=_show_lines,
        ),
        Op(
            "terminate",
            "Stop a child; it stays stopped until restarted.\n\n"
            "Waits until the child has stopped: up to its shutdown time, then it is killed.",
            _terminate,
            fields=(_CHILD_ID,),
            show=_said("terminated"),
            budget=_child_stop_time,
        ),
        Op(
            "restart",
            "Start a stopped child, or stop and start a running one.",
            _restart,
            fields=(_CHILD_ID,),
            show=_said("restarted"),
            budget=_child_stop_time,
        ),
        Op(
            "resize",
            "Resize POOL (agent type, pool name or path) to SIZE members.",
            _resize,
            fields=(
                Field("pool", str, "agent type, pool name or path", "worker", metavar="POOL"),
                Field("size", int, "the number of members", 4, minimum=0, metavar="SIZE"),
            ),
            show=_show_resize,
            budget=_pool_stop_time,
        ),
        Op("stop", "Stop the whole tree gracefully (like SIGTERM to the hub).", _stop),
        Op(
            "budget",
            "Seconds another request may take inside the hub (the client's timeout).",
            _budget,
            fields=(Field("request", dict, "the request to estimate", {"op": "list"}),),
            command=False,
        ),
    ]
}
"""Every control operation, by name: the one place to add one."""


# --------------------------------------------------------------------------------------
# The hub's side


_MAX_DEPTH = 32
"""The deepest nesting of arrays and objects a request (or an answer) may have."""
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[][{}]")


def _too_deep(line: bytes) -> bool:
    """Whether ``line`` nests arrays or objects more than :data:`_MAX_DEPTH` deep.

    Checked before decoding: the JSON decoder recurses per level, and a RecursionError
    near the stack limit also breaks whatever finalizer the garbage collector runs there.
    Brackets inside strings do not count; an unterminated string may count its brackets,
    which only makes a line that is not JSON anyway read as too deep.
    """
    if line.count(b"[") + line.count(b"{") <= _MAX_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b'""', line)):
        if bracket[0] in (b"[", b"{"):
            depth += 1
            if depth > _MAX_DEPTH:
                return True
        else:
            depth = max(0, depth - 1)
    return False


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


async def _answer(hub: Hub, line: bytes, background: trio.Nursery) -> dict[str, Any]:
    """The answer to one request line; never raises (but for cancellation)."""
    if _too_deep(line):
        return _error(
            f"request is nested more than {_MAX_DEPTH} levels deep; a request is a flat JSON "
            'object like {"op": "list"}'
        )
    try:
        req = json.loads(line)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        return _error(
            f'request is not a JSON object on one line ({exc}); send e.g. {{"op": "list"}}'
        )
    try:
        op, args = parse_request(req)
    except ControlError as exc:
        return _error(str(exc))
    try:
        result = await op.run(hub, args, background)
    except ControlError as exc:
        return _error(str(exc))
    except Exception as exc:
        logger.exception("control request %r failed inside the hub", op.name)
        return _error(f"{op.name} failed inside the hub: {type(exc).__name__}: {exc}")
    return {"ok": True, "result": result}


def _encode(answer: dict[str, Any]) -> bytes:
    try:
        return json.dumps(answer).encode() + b"\n"
    except (TypeError, ValueError) as exc:  # pragma: no cover - results are plain JSON
        return json.dumps(_error(f"the result cannot be sent as JSON: {exc}")).encode() + b"\n"


async def _serve_connection(hub: Hub, stream: trio.SocketStream, background: trio.Nursery) -> None:
    too_long = _error(
        f"request line longer than {_MAX_LINE} bytes; it was skipped up to its newline"
    )
    buf = bytearray()
    skipping = False  # inside an over-long line: drop bytes up to the next newline
    async with stream:
        try:
            while chunk := await stream.receive_some(65536):
                buf += chunk
                while (end := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:end])
                    del buf[: end + 1]
                    if skipping:
                        skipping = False
                    elif len(line) > _MAX_LINE:
                        await stream.send_all(_encode(too_long))
                    elif line.strip():
                        await stream.send_all(_encode(await _answer(hub, line, background)))
                if len(buf) > _MAX_LINE and not skipping:
                    skipping = True
                    await stream.send_all(_encode(too_long))
                if skipping:
                    buf.clear()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


def _claim(path: Path) -> None:
    """Make the socket's directory, refuse a live hub's socket, remove a dead one's."""
    if path.parent == _default_base():
        _check_private_dir(path.parent, ControlError, "--control-socket")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlError(
            f"cannot create the control socket's directory {path.parent}: {exc.strerror}; "
            "pass --control-socket PATH in a directory you can write"
        ) from None
    if path.parent == _default_base():
        _check_private_dir(path.parent, ControlError, "--control-socket")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(
            f"{path} exists and is not a socket; hubvisor will not replace it: remove it if "
            "it is a leftover, or pass --control-socket PATH"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)  # left by a hub that died: take it over
            return
        raise ControlError(
            f"cannot use the control socket {path}: {exc.strerror}; remove it, or pass "
            "--control-socket PATH"
        ) from None
    finally:
        probe.close()
    raise _taken(path)


def _taken(path: Path) -> ControlError:
    return ControlError(
        f"another hub is already listening at {path}; stop that hub (hubvisor ctl --socket "
        f"{path} stop), or run this one with another hub id (the root spec's name) or "
        "--control-socket PATH"
    )


async def serve_control(
    hub: Hub, path: Path, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve control requests for ``hub`` on the Unix socket ``path`` until cancelled.

    Raises:
        ControlError: another hub listens at ``path``, or its directory is unsafe or
            cannot be made (before anything is served).
    """
    _claim(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            await sock.bind(str(path))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _taken(path) from None
            raise ControlError(
                f"cannot listen on {path}: {exc.strerror or exc}; pass --control-socket PATH "
                "(a short path in a directory you can write)"
            ) from None
        os.chmod(path, 0o600)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)

            async def handler(stream: trio.SocketStream) -> None:
                await _serve_connection(hub, stream, nursery)

            await trio.serve_listeners(handler, [listener], handler_nursery=nursery)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        with trio.CancelScope(shield=True):
            await listener.aclose()


# --------------------------------------------------------------------------------------
# The client's side


class _Client:
    """One blocking connection to a hub: requests in, answers out, every failure explained."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.buf = b""

    def connect(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(self.path))
        except OSError as exc:
            raise ControlClientError(
                f"no hub is listening on {self.path} ({exc.strerror or exc}); is `hubvisor "
                "run` running with that hub id, or pass --socket"
            ) from None

    def ask(self, req: dict[str, Any], timeout: float) -> Any:
        op = _show_value(req.get("op") if isinstance(req, dict) else req)
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(json.dumps(req).encode() + b"\n")
            while b"\n" not in self.buf:
                if len(self.buf) > _MAX_ANSWER:
                    raise ControlClientError(
                        f"the hub at {self.path} sent an answer longer than {_MAX_ANSWER} bytes"
                    )
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise ControlClientError(
                        f"the hub at {self.path} closed the connection before answering {op}"
                    )
                self.buf += chunk
        except TimeoutError:
            raise ControlClientError(
                f"the hub at {self.path} did not answer {op} within {timeout:g}s; it may still "
                "be carrying it out (see `hubvisor ctl list`); wait longer with --timeout "
                "SECONDS"
            ) from None
        except OSError as exc:
            raise ControlClientError(
                f"lost the connection to the hub at {self.path} ({exc.strerror or exc})"
            ) from None
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            answer = None if _too_deep(line) else json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            raise ControlClientError(
                f"the hub at {self.path} sent an answer that is not a hubvisor answer: "
                f"{line[:80]!r}; is {self.path} the control socket of a hubvisor hub?"
            )
        if not answer["ok"]:
            raise ControlClientError(str(answer.get("error")))
        return answer.get("result")

    def close(self) -> None:
        self.sock.close()


def _budget_of(client: _Client, req: dict[str, Any]) -> float:
    wait = client.ask({"op": "budget", "request": req}, FAST_TIMEOUT)
    if not isinstance(wait, int | float) or isinstance(wait, bool) or not math.isfinite(wait):
        raise ControlClientError(
            f"the hub at {client.path} gave {_show_value(wait)} as the time "
            f"{_show_value(req.get('op'))} may take; pass --timeout SECONDS"
        )
    return max(0.0, float(wait))


def request(path: Path, req: dict[str, Any], timeout: float | None = None) -> Any:
    """Send one request to the hub at ``path`` and return its result (blocking client).

    ``timeout``: seconds to wait for the answer. ``None``: :data:`FAST_TIMEOUT`, plus,
    for an op that may take a while inside the hub (``terminate`` waits up to the
    child's shutdown time), the time the hub says it may take.

    Raises:
        ControlClientError: no hub listens at ``path``, its directory is unsafe, the
            hub refused the request, did not answer in time, or answered garbage.
    """
    if path.parent == _default_base():
        _check_private_dir(path.parent, ControlClientError, "--socket")
    client = _Client(path)
    try:
        client.connect(FAST_TIMEOUT if timeout is None else timeout)
        if timeout is None:
            timeout = FAST_TIMEOUT
            name = req.get("op") if isinstance(req, dict) else None
            op = OPS.get(name) if isinstance(name, str) else None
            if op is not None and op.budget is not None:
                timeout += _budget_of(client, req)
        return client.ask(req, timeout)
    finally:
        client.close()
