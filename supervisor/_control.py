"""A local control socket for a running hub, and the client ``hubvisor ctl`` uses.

The hub listens on a Unix stream socket (mode 0600 in a 0700 directory, so only its
user can talk to it). Each request is one JSON object on one line; each answer is one
JSON line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``. A
malformed request gets an error answer and the connection stays usable.

Requests: ``{"op": "list"}``, ``{"op": "count"}``, ``{"op": "logs", "id": ID, "lines": N}``,
``{"op": "terminate", "id": ID}``, ``{"op": "restart", "id": ID}``,
``{"op": "resize", "pool": POOL, "size": N}``, ``{"op": "stop"}``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import trio

from ._errors import ControlError, HubvisorError
from ._hub import Hub

__all__ = ["ControlClientError", "default_socket_path", "request", "serve_control"]

_MAX_LINE = 64 * 1024
OPS = ("list", "count", "logs", "terminate", "restart", "resize", "stop")


class ControlClientError(HubvisorError):
    """The control socket could not be reached, or the hub refused the request."""


def default_socket_path(hub_id: str) -> Path:
    """``$XDG_RUNTIME_DIR/hubvisor/<hub_id>.sock``, or under ``/tmp/hubvisor-<uid>/``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = (
        Path(runtime) / "hubvisor"
        if runtime
        else Path(tempfile.gettempdir()) / f"hubvisor-{os.getuid()}"
    )
    return base / f"{hub_id}.sock"


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


def _field(req: dict[str, Any], name: str, kind: type) -> Any:
    value = req.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ControlError(
            f"request {req.get('op')!r} needs {name!r} as a {kind.__name__} (got {value!r})"
        )
    return value


async def _dispatch(hub: Hub, req: Any, stopper: trio.Nursery) -> Any:
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise ControlError(f'a request is a JSON object like {{"op": "list"}} (got {req!r})')
    op = req["op"]
    if op == "list":
        return _rows(hub)
    if op == "count":
        return hub.count_children()
    if op == "logs":
        lines = req.get("lines")
        if lines is not None and (not isinstance(lines, int) or isinstance(lines, bool)):
            raise ControlError(f"'lines' must be an int (got {lines!r})")
        return hub.logs(_field(req, "id", str), lines)
    if op == "terminate":
        await hub.terminate_child(_field(req, "id", str))
        return None
    if op == "restart":
        await hub.restart_child(_field(req, "id", str))
        return None
    if op == "resize":
        await hub.resize(_field(req, "pool", str), _field(req, "size", int))
        return None
    if op == "stop":
        stopper.start_soon(hub.stop)
        return "stopping"
    raise ControlError(f"unknown op {op!r}; the ops are {', '.join(OPS)}")


async def _serve_connection(hub: Hub, stream: trio.SocketStream, stopper: trio.Nursery) -> None:
    buf = b""
    async with stream:
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not chunk:
                return
            buf += chunk
            if b"\n" not in buf and len(buf) > _MAX_LINE:
                await stream.send_all(
                    json.dumps(
                        {"ok": False, "error": f"request longer than {_MAX_LINE} bytes"}
                    ).encode()
                    + b"\n"
                )
                return
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    result = await _dispatch(hub, json.loads(line), stopper)
                    answer: dict[str, Any] = {"ok": True, "result": result}
                except (ValueError, ControlError) as exc:
                    answer = {"ok": False, "error": str(exc)}
                try:
                    await stream.send_all(json.dumps(answer).encode() + b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return


def _claim(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)  # left by a hub that died: take it over
            return
        raise
    finally:
        probe.close()
    raise ControlError(
        f"another hub is already listening on {path}; stop it, or give this one another "
        "hub id or --control-socket path"
    )


async def serve_control(
    hub: Hub, path: Path, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve control requests for ``hub`` on the Unix socket ``path`` until cancelled."""
    _claim(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
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


def request(path: Path, req: dict[str, Any], timeout: float = 60.0) -> Any:
    """Send one request to the hub at ``path`` and return its result (blocking client)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise ControlClientError(
                f"no hub is listening on {path} ({exc.strerror or exc}); is `hubvisor run` "
                "running with that hub id, or pass --socket"
            ) from None
        sock.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ControlClientError(f"the hub at {path} closed the connection")
            buf += chunk
    answer = json.loads(buf.split(b"\n", 1)[0])
    if not answer.get("ok"):
        raise ControlClientError(str(answer.get("error")))
    return answer.get("result")
