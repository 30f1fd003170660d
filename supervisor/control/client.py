"""The client's side of the control socket: blocking, stdlib sockets, for ``hubvisor``
and for Python code that controls a hub (``request``, ``stream``, ``request_many``).

It imports neither the runtime nor the hub (nor trio): a client command starts fast.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

from .._errors import HubvisorError
from . import ops
from .ops import OPS, Op, show_value
from .paths import check_private_dir, default_base, no_hub_message, peer_pid
from .wire import MAX_ANSWER, MAX_LINE, loads_answer, too_deep

__all__ = [
    "ControlClientError",
    "HubBusy",
    "HubRefused",
    "IdleClosed",
    "NoHubRunning",
    "connect_error",
    "encode_request",
    "no_answer",
    "parse_answer",
    "request",
    "request_many",
    "stop_and_wait",
    "stream",
    "stream_limits",
]


class ControlClientError(HubvisorError):
    """The control socket could not be reached, or the hub refused the request."""


class NoHubRunning(ControlClientError):
    """Nothing listens at the control socket (no file there, or a dead hub's file)."""


class HubBusy(ControlClientError):
    """The hub serves as many control connections as it may
    (:class:`~supervisor.control.ops.ControlLimits`)."""


class HubRefused(ControlClientError):
    """The hub answered the request with an error (an unknown id, a bad field...); the
    connection is fine for more requests."""


class IdleClosed(ControlClientError):
    """The hub closed the connection for being idle before it read the request (nothing
    was done: sending it again on a new connection is safe)."""


def connect_error(path: Path, exc: OSError) -> ControlClientError:
    """The error of a failed connect to ``path``: :class:`NoHubRunning` when nothing
    listens there."""
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return NoHubRunning(no_hub_message(path))
    return ControlClientError(
        f"no hub is listening on {path} ({exc.strerror or exc}); is `hubvisor run` running "
        "with that hub id, or pass --socket"
    )


def encode_request(req: dict[str, Any]) -> bytes:
    """A request as its line, or a :class:`ControlClientError` saying why it cannot be."""
    try:
        line = json.dumps(req, allow_nan=False).encode() + b"\n"
    except ValueError:
        raise ControlClientError(
            f"the {show_value(req.get('op'))} request holds NaN or Infinity, which JSON "
            "does not allow (the protocol forbids them); send null, a string or a finite "
            "number"
        ) from None
    if len(line) > MAX_LINE:
        raise ControlClientError(
            f"the request is {len(line)} bytes, over the {MAX_LINE} a control request may "
            "have; put large inputs in a file or store and pass their name"
        )
    return line


def no_answer(path: Path, op: str, timeout: float | None) -> ControlClientError:
    """The error of an answer that did not come within ``timeout`` seconds."""
    return ControlClientError(
        f"the hub at {path} did not answer {op} within {timeout or 0:g}s; it may still be "
        "carrying it out (see `hubvisor ctl list`); wait longer with --timeout SECONDS"
    )


def parse_answer(path: Path, line: bytes) -> dict[str, Any]:
    """The answer on one line from the hub at ``path``; an ``ok: false`` one raises.

    Raises:
        HubBusy: the hub is at its connection cap (nothing was done).
        IdleClosed: the hub closed the connection as idle (nothing was done).
        HubRefused: the hub refused the request, with its error.
        ControlClientError: the line is not a hubvisor answer.
    """
    try:
        answer = None if too_deep(line) else loads_answer(line)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise ControlClientError(
            f"the hub at {path} sent an answer that is not a hubvisor answer: "
            f"{line[:80]!r}; is {path} the control socket of a hubvisor hub?"
        )
    if not answer["ok"]:
        error = (
            HubBusy
            if answer.get("busy") is True
            else IdleClosed
            if answer.get("idle") is True
            else HubRefused
        )
        raise error(str(answer.get("error")))
    return answer


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
            raise connect_error(self.path, exc) from None

    def send(self, req: dict[str, Any]) -> None:
        line = encode_request(req)
        try:
            self.sock.sendall(line)
        except OSError as exc:
            # A busy hub answers and closes before reading: its answer may be waiting.
            try:
                self.read("", 1.0)
            except (HubBusy, IdleClosed):  # the hub refused before reading: nothing done
                raise
            except (ControlClientError, OSError):
                pass
            raise ControlClientError(
                f"lost the connection to the hub at {self.path} ({exc.strerror or exc})"
            ) from None

    def read(self, op: str, timeout: float | None, ended: str | None = None) -> dict[str, Any]:
        """The next answer line; an ``ok: false`` one raises; ``ended``: the error if the
        hub closes the connection (default: it closed it before answering)."""
        self.sock.settimeout(timeout)
        try:
            while b"\n" not in self.buf:
                if len(self.buf) > MAX_ANSWER:
                    raise ControlClientError(
                        f"the hub at {self.path} sent an answer longer than {MAX_ANSWER} bytes"
                    )
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise ControlClientError(
                        ended
                        or f"the hub at {self.path} closed the connection before answering {op}"
                    )
                self.buf += chunk
        except TimeoutError:
            raise no_answer(self.path, op, timeout) from None
        except OSError as exc:
            raise ControlClientError(
                f"lost the connection to the hub at {self.path} ({exc.strerror or exc})"
            ) from None
        line, self.buf = self.buf.split(b"\n", 1)
        return parse_answer(self.path, line)

    def ask(self, req: dict[str, Any], timeout: float) -> Any:
        op = show_value(req.get("op") if isinstance(req, dict) else req)
        self.send(req)
        return self.read(op, timeout).get("result")

    def close(self) -> None:
        self.sock.close()


def _budget_of(client: _Client, req: dict[str, Any]) -> float:
    wait = client.ask({"op": "budget", "request": req}, ops.FAST_TIMEOUT)
    if not isinstance(wait, int | float) or isinstance(wait, bool) or not math.isfinite(wait):
        raise ControlClientError(
            f"the hub at {client.path} gave {show_value(wait)} as the time "
            f"{show_value(req.get('op'))} may take; pass --timeout SECONDS"
        )
    return max(0.0, float(wait))


def _connect(path: Path, timeout: float) -> _Client:
    if path.parent == default_base():
        check_private_dir(path.parent, ControlClientError, "--socket")
    client = _Client(path)
    try:
        client.connect(timeout)
    except BaseException:
        client.close()
        raise
    return client


def request(path: Path, req: dict[str, Any], timeout: float | None = None) -> Any:
    """Send one request to the hub at ``path`` and return its result (blocking client).

    ``timeout``: seconds to wait for the answer. ``None``: ``FAST_TIMEOUT``, plus,
    for an op that may take a while inside the hub (``terminate`` waits up to the
    child's shutdown time), the time the hub says it may take. A streaming op's result
    is the list of its items (it must not follow: see :func:`stream`).

    Raises:
        NoHubRunning: nothing listens at ``path``.
        ControlClientError: the socket's directory is unsafe, the hub refused the
            request, did not answer in time, or answered garbage.
    """
    name = req.get("op") if isinstance(req, dict) else None
    op = OPS.get(name) if isinstance(name, str) else None
    if op is not None and op.stream:
        if req.get("follow"):
            raise ControlClientError(f"{name} with follow never ends; read it with stream()")
        found = stream(path, req, timeout)
        return [answer["item"] for answer in found if "item" in answer]
    return _retry_busy(lambda: _request_once(path, req, op, timeout), timeout)


def _request_once(path: Path, req: dict[str, Any], op: Op | None, timeout: float | None) -> Any:
    client = _connect(path, ops.FAST_TIMEOUT if timeout is None else timeout)
    try:
        if timeout is None:
            timeout = ops.FAST_TIMEOUT
            if op is not None and op.budget:
                timeout += _budget_of(client, req)
        return client.ask(req, timeout)
    finally:
        client.close()


def request_many(
    path: Path, reqs: Iterable[dict[str, Any]], timeout: float | None = None
) -> Iterator[Any]:
    """Send requests one after another over one connection; yield each result in turn.

    For many small requests (``hubvisor submit TYPE -`` with JSON lines): one connect
    for all of them. Each waits ``timeout`` (default ``FAST_TIMEOUT``,
    plus the op's budget as in :func:`request`); streaming ops are refused.
    Stops at the first refused request (its error is raised; the results before it were
    yielded). The requests are taken lazily, so the caller may stop early.

    Raises:
        NoHubRunning: nothing listens at ``path``.
        ControlClientError: as :func:`request`.
    """
    wait = ops.FAST_TIMEOUT if timeout is None else timeout
    client: _Client | None = None

    def ask(client: _Client, req: dict[str, Any], op: Op | None) -> Any:
        budget = _budget_of(client, req) if timeout is None and op and op.budget else 0.0
        return client.ask(req, wait + budget)

    def first(req: dict[str, Any], op: Op | None) -> tuple[_Client, Any]:
        client = _connect(path, wait)
        try:
            return client, ask(client, req, op)
        except BaseException:
            client.close()
            raise

    try:
        for req in reqs:
            name = req.get("op")
            op = OPS.get(name) if isinstance(name, str) else None
            if op is not None and op.stream:
                raise ControlClientError(f"{name} streams; read it with stream()")
            if client is None:  # a busy hub refuses before reading: safe to try again
                client, result = _retry_busy(lambda: first(req, op), timeout)  # noqa: B023
            else:
                result = ask(client, req, op)
            yield result
    finally:
        if client is not None:
            client.close()


def _retry_busy(attempt: Callable[[], Any], timeout: float | None) -> Any:
    """``attempt()``, tried again while the hub is busy (at its connection cap, see
    :class:`~supervisor.control.ops.ControlLimits`) until ``timeout`` (default
    :data:`~supervisor.control.ops.FAST_TIMEOUT`) runs out.

    A busy hub closed the connection before reading the request: nothing was done,
    so trying again is safe.
    """
    deadline = time.monotonic() + (ops.FAST_TIMEOUT if timeout is None else timeout)
    pause = 0.05
    while True:
        try:
            return attempt()
        except HubBusy:
            if time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(1.0, pause * 2)


def stream_limits(
    path: Path, req: dict[str, Any], timeout: float | None
) -> tuple[float | None, str | None]:
    """How long to wait for each line of a stream (``None``: for ever), and the error when
    the hub closes the connection in the middle (``None``: the usual one)."""
    op = OPS.get(req["op"]) if isinstance(req.get("op"), str) else None
    if op is not None and op.waits:
        own = req.get("timeout")
        if timeout is None and isinstance(own, int | float):
            timeout = own + ops.FAST_TIMEOUT
        return timeout, (
            f"the hub at {path} closed the connection before the wait ended: it stopped; "
            "where the items are: `hubvisor work show ID` on a hub that serves them"
        )
    if req.get("follow"):
        return timeout, (
            f"the hub at {path} ended the stream without saying why: it was killed or died"
        )
    return ops.FAST_TIMEOUT if timeout is None else timeout, None


def stream(
    path: Path, req: dict[str, Any], timeout: float | None = None
) -> Generator[Any, None, None]:
    """Send a streaming request; yield its answers until the stream ends (blocking client).

    Each answer is ``{"item": ...}`` or ``{"dropped": N}`` (N items the hub dropped
    there because this client read too slowly). A request with ``follow`` goes on until
    the caller stops iterating (closing the connection ends the stream in the hub), and
    so may a waiting op (``work_wait``). ``timeout``: seconds to wait for each answer
    (default: ``FAST_TIMEOUT``; for ever while following; for a wait, the request's own
    ``timeout`` plus ``FAST_TIMEOUT``, or for ever).

    A following stream ends (the generator returns) when the hub stops with exit status
    0.

    Raises:
        NoHubRunning: nothing listens at ``path``.
        ControlClientError: the hub refused the request, ended a following stream
            without saying why (it died), stopped with a nonzero exit status, did not
            answer in time, or answered garbage.
    """
    name = show_value(req.get("op"))
    wait, ended = stream_limits(path, req, timeout)

    def first() -> tuple[_Client, dict[str, Any]]:
        client = _connect(path, ops.FAST_TIMEOUT if timeout is None else timeout)
        try:
            client.send(req)
            return client, client.read(name, wait, ended)
        except BaseException:
            client.close()
            raise

    client, answer = _retry_busy(first, timeout)
    try:
        while True:
            if answer.get("end"):
                code = answer.get("code")
                if answer.get("stopped") and isinstance(code, int) and code != 0:
                    raise ControlClientError(f"the hub at {path} stopped with exit status {code}")
                return  # the stream's end, or the end of a follow when the hub stopped well
            if "item" in answer or "dropped" in answer:
                yield {k: answer[k] for k in ("item", "dropped") if k in answer}
            elif "result" in answer:
                raise ControlClientError(
                    f"{name} is not a streaming op of the hub at {path}; is it the same "
                    "hubvisor version?"
                )
            answer = client.read(name, wait, ended)
    finally:
        client.close()


def stop_and_wait(path: Path, timeout: float | None = None) -> int | None:
    """Ask the hub at ``path`` to stop and wait until it has stopped and its process is
    gone (``hubvisor stop --wait``): its exit status (``None``: it did not say, e.g. it
    was killed meanwhile).

    A following stream is opened first, so the hub's last line to it carries its exit
    status; ``timeout``: seconds to wait at most (default: as long as it takes).

    Raises:
        NoHubRunning: nothing listens at ``path``.
        TimeoutError: the hub had not stopped after ``timeout`` seconds.
        ControlClientError: as :func:`request`.
    """
    deadline = None if timeout is None else time.monotonic() + timeout

    def left() -> float | None:
        if deadline is None:
            return None
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the hub at {path} had not stopped after {timeout:g}s")
        return deadline - time.monotonic()

    gone = f"the hub at {path} closed the connection"
    client = _retry_busy(lambda: _connect(path, ops.FAST_TIMEOUT), timeout)
    code = None
    try:
        pid = peer_pid(client.sock)
        client.send({"op": "events", "follow": True, "lines": 1})
        client.read("events", ops.FAST_TIMEOUT, gone)  # served: the last event kept
        request(path, {"op": "stop"})
        while True:
            wait = left()
            try:
                answer = client.read("events", wait, gone)
            except ControlClientError as exc:
                if str(exc) == gone:  # it died without a word
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    continue  # the read timed out: left() says so
                raise
            if answer.get("end"):
                code = answer.get("code") if isinstance(answer.get("code"), int) else None
                break
    finally:
        client.close()
    while pid is not None and _running(pid):  # it stopped serving: wait for its exit
        left()
        time.sleep(0.02)
    return code


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
