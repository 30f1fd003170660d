"""The hub's side of the control socket: framing, bounds and dispatch.

The hub listens on a Unix stream socket (mode 0600; by default in a private 0700
directory, so only its user can talk to it). Each request is one JSON object on one line;
each answer is one JSON line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
"..."}``. Anything malformed (bytes that are not UTF-8 or JSON, JSON nested too deeply, a
line longer than 64 KiB, unknown ops or fields, values of the wrong type) gets an error
answer; the hub keeps running and the connection stays usable. A *streaming* op (``logs
-f``, ``events -f``) answers with one ``{"ok": true, "item": ...}`` line per item instead;
see :class:`~supervisor.control.handlers.Stream`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from agents._protocol import NotJSON

from .._errors import ControlError
from .._log import logger
from .events import EventRing, find_ring
from .handlers import HANDLERS, STREAMS, Stream
from .ops import Args, ControlLimits, Op, parse_request
from .paths import claim, taken
from .wire import MAX_DEPTH, MAX_LINE, dumps, loads_request, too_deep

if TYPE_CHECKING:
    from .._hub import Hub

__all__ = ["serve_control"]

_DEFAULT_LIMITS = ControlLimits()


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _parse_line(line: bytes) -> tuple[Op, dict[str, Any]] | dict[str, Any]:
    """The op and arguments of one request line, or the error answer to it."""
    if too_deep(line):
        return _error(
            f"request is nested more than {MAX_DEPTH} levels deep; a request is a flat JSON "
            'object like {"op": "list"}'
        )
    try:
        req = loads_request(line)
    except NotJSON as exc:
        return _error(f"request is not valid JSON: {exc}")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        return _error(
            f'request is not a JSON object on one line ({exc}); send e.g. {{"op": "list"}}'
        )
    try:
        return parse_request(req)
    except ControlError as exc:
        return _error(str(exc))


def _failed(op: Op, exc: Exception) -> dict[str, Any]:
    if isinstance(exc, ControlError):
        return _error(str(exc))
    logger.exception("control request %r failed inside the hub", op.name)
    return _error(f"{op.name} failed inside the hub: {type(exc).__name__}: {exc}")


async def _carry_out(hub: Hub, op: Op, args: Args, background: trio.Nursery) -> dict[str, Any]:
    """The answer to one valid request; never raises (but for cancellation)."""
    try:
        result = await HANDLERS[op.name](hub, args, background)
    except Exception as exc:
        return _failed(op, exc)
    return {"ok": True, "result": result}


async def _answer(hub: Hub, line: bytes, background: trio.Nursery) -> dict[str, Any]:
    """The answer to one request line of a non-streaming op; never raises."""
    parsed = _parse_line(line)
    if isinstance(parsed, dict):
        return parsed
    return await _carry_out(hub, *parsed, background)


def _encode(answer: dict[str, Any]) -> bytes:
    try:
        return dumps(answer).encode() + b"\n"
    except (TypeError, ValueError) as exc:  # pragma: no cover - results are plain JSON
        return dumps(_error(f"the result cannot be sent as JSON: {exc}")).encode() + b"\n"


async def _farewell(sock: trio.SocketStream, exit_code: Callable[[], int | None] | None) -> None:
    """Tell a follower the hub is stopping (the stream's end, with the hub's exit code when
    known), if it takes the line at once; shielded: the hub is being cancelled."""
    code = exit_code() if exit_code is not None else None
    end: dict[str, Any] = {"ok": True, "end": True, "stopped": True}
    if code is not None:
        end["code"] = code
    gone = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
    with (
        trio.CancelScope(shield=True, deadline=trio.current_time() + 1.0),
        contextlib.suppress(*gone),
    ):
        await sock.send_all(_encode(end))


async def _serve_stream(
    hub: Hub,
    op: Op,
    args: Args,
    sock: trio.SocketStream,
    ring: EventRing | None = None,
    exit_code: Callable[[], int | None] | None = None,
) -> bool:
    """Run a streaming op on the connection; whether the connection may go on.

    The items go out as ``{"ok": true, "item": ...}`` lines, a gap as ``{"ok": true,
    "dropped": N}``, and the end as ``{"ok": true, "end": true}`` or an error answer. A
    stream that follows (``args["follow"]``) or waits (``op.waits``) takes the connection
    over: it ends when the client closes the connection (whatever the client sends
    meanwhile is ignored), and the connection closes after it. A following stream still
    open when the hub stops (the server is cancelled) ends with ``{"ok": true, "end":
    true, "stopped": true, "code": N}`` (``code``: the hub's exit status, when known).
    """
    assert op.stream
    handler = STREAMS[op.name]
    follow = bool(args.get("follow")) or op.waits
    out = Stream(ring=ring)
    final = {"ok": True, "end": True}
    open_ = True

    async def produce() -> None:
        nonlocal final
        try:
            await handler(hub, args, out)
        except Exception as exc:
            final = _failed(op, exc)
        finally:
            out._send.close()

    async def watch(scope: trio.CancelScope) -> None:
        nonlocal open_
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await sock.receive_some(65536):
                pass
        open_ = False
        scope.cancel()

    async with trio.open_nursery() as nursery:
        if follow:
            nursery.start_soon(watch, nursery.cancel_scope)
        nursery.start_soon(produce)
        try:
            async for gap, item in out._receive:
                if gap:
                    await sock.send_all(_encode({"ok": True, "dropped": gap}))
                await sock.send_all(_encode({"ok": True, "item": item}))
            if out._gap:
                await sock.send_all(_encode({"ok": True, "dropped": out._gap}))
            await sock.send_all(_encode(final))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            open_ = False
        except trio.Cancelled:
            if args.get("follow") and open_:  # the hub is stopping, not the client leaving
                await _farewell(sock, exit_code)
            raise
        nursery.cancel_scope.cancel()
    return open_ and not follow


async def _send(stream: trio.SocketStream, data: bytes, limits: ControlLimits) -> None:
    """Send an answer; a client that does not take it within the request timeout is
    cut off (it would hold a connection, and the hub's buffers, for ever)."""
    with trio.move_on_after(limits.request_timeout) as scope:
        await stream.send_all(data)
    if scope.cancelled_caught:
        raise trio.ClosedResourceError("the client did not read its answer")


async def _goodbye(stream: trio.SocketStream, answer: dict[str, Any]) -> None:
    """Send a last error line if the client takes it at once, then close."""
    with trio.move_on_after(1.0), contextlib.suppress(trio.BrokenResourceError, OSError):
        await stream.send_all(_encode(answer))
    with trio.CancelScope(shield=True):
        await stream.aclose()


async def _serve_connection(
    hub: Hub,
    stream: trio.SocketStream,
    background: trio.Nursery,
    limits: ControlLimits = _DEFAULT_LIMITS,
    ring: EventRing | None = None,
    exit_code: Callable[[], int | None] | None = None,
) -> None:
    too_long = _error(
        f"request line longer than {MAX_LINE} bytes; it was skipped up to its newline"
    )
    buf = bytearray()
    skipping = False  # inside an over-long line: drop bytes up to the next newline
    idle_since = trio.current_time()  # the last answer (or the opening)
    line_since: float | None = None  # the first byte of a request not read whole yet
    async with stream:
        try:
            while True:
                if line_since is None:
                    deadline, why = idle_since + limits.idle_timeout, "idle"
                else:
                    deadline, why = line_since + limits.request_timeout, "slow"
                with trio.move_on_at(deadline) as waiting:
                    chunk = await stream.receive_some(65536)
                if waiting.cancelled_caught:
                    # "idle": no request was read, so a client may send it again elsewhere.
                    flag = {"idle": True} if why == "idle" else {}
                    await _goodbye(stream, {**_error(_timed_out(why, limits)), **flag})
                    return
                if not chunk:
                    return
                buf += chunk
                answered = False
                while (end := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:end])
                    del buf[: end + 1]
                    answered = True
                    if skipping:
                        skipping = False
                    elif len(line) > MAX_LINE:
                        await _send(stream, _encode(too_long), limits)
                    elif line.strip():
                        parsed = _parse_line(line)
                        if isinstance(parsed, dict):
                            await _send(stream, _encode(parsed), limits)
                        elif parsed[0].stream:
                            if not await _serve_stream(hub, *parsed, stream, ring, exit_code):
                                return
                        else:
                            answer = await _carry_out(hub, *parsed, background)
                            await _send(stream, _encode(answer), limits)
                if len(buf) > MAX_LINE and not skipping:
                    skipping = True
                    await _send(stream, _encode(too_long), limits)
                if skipping:
                    buf.clear()
                now = trio.current_time()
                if answered:
                    idle_since, line_since = now, None
                if (buf or skipping) and line_since is None:
                    line_since = now
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


def _timed_out(why: str, limits: ControlLimits) -> str:
    if why == "idle":
        return (
            f"connection closed: no request for {limits.idle_timeout:g}s (the hub's idle "
            "timeout for control connections); connect again to send more"
        )
    return (
        f"connection closed: a request line took over {limits.request_timeout:g}s to "
        "arrive; send each request as one line ending in a newline"
    )


@attrs.define
class _Gate:
    """Counts the control connections served; refuses those over the cap."""

    limits: ControlLimits
    open: int = 0
    refused: int = 0

    async def serve(
        self, stream: trio.SocketStream, serve: Callable[[trio.SocketStream], Awaitable[None]]
    ) -> None:
        if self.open >= self.limits.max_connections:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                logger.warning(
                    "control socket: %d connections open, the most it serves "
                    "(ControlLimits.max_connections); refusing new ones (%d so far)",
                    self.open,
                    self.refused,
                )
            busy = _error(
                f"the hub is serving {self.limits.max_connections} control connections, "
                f"the most it takes at once; try again (idle ones close after "
                f"{self.limits.idle_timeout:g}s)"
            )
            await _goodbye(stream, {**busy, "busy": True})
            return
        self.open += 1
        try:
            await serve(stream)
        finally:
            self.open -= 1


async def serve_control(
    hub: Hub,
    path: Path,
    *,
    limits: ControlLimits = _DEFAULT_LIMITS,
    events: EventRing | None = None,
    exit_code: Callable[[], int | None] | None = None,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve control requests for ``hub`` on the Unix socket ``path`` until cancelled.

    ``limits`` bounds the connections (how many at once, how long idle or slow); see
    :class:`ControlLimits`. ``events``: the ring the ``events`` op reads (default: the
    hub's :class:`EventRing` service); the server runs it if nothing does yet.
    ``exit_code``: the hub's exit status once it has stopped (``None``: not known), told
    to the followers still open when the server is cancelled.

    Raises:
        ControlError: another hub listens at ``path``, or its directory is unsafe or
            cannot be made (before anything is served).
    """
    claim(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            await sock.bind(str(path))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise taken(path) from None
            raise ControlError(
                f"cannot listen on {path}: {exc.strerror or exc}; pass --control-socket PATH "
                "(a short path in a directory you can write)"
            ) from None
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(sock)
    ring = events or find_ring(hub) or EventRing()
    try:
        async with trio.open_nursery() as nursery:
            if not ring.running:
                await nursery.start(ring.run, hub)
            task_status.started(path)

            gate = _Gate(limits)

            async def serve(stream: trio.SocketStream) -> None:
                await _serve_connection(hub, stream, nursery, limits, ring, exit_code)

            async def handler(stream: trio.SocketStream) -> None:
                await gate.serve(stream, serve)

            await trio.serve_listeners(handler, [listener], handler_nursery=nursery)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        with trio.CancelScope(shield=True):
            await listener.aclose()
