"""The trio client library: :class:`AsyncClient`, :class:`~supervisor.Client`'s twin for
programs that run under trio (a scheduler that waits for many items at once)."""

from __future__ import annotations

import builtins
import math
import os
import socket
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import trio

from ._client import (
    find_socket,
    result_of,
    submit_request,
    submitted,
    timed_out,
    wait_request,
)
from .control import ops
from .control.client import (
    ControlClientError,
    HubBusy,
    HubRefused,
    IdleClosed,
    connect_error,
    encode_request,
    no_answer,
    parse_answer,
    stream_limits,
)
from .control.ops import show_value
from .control.paths import check_private_dir, default_base
from .control.wire import MAX_ANSWER

__all__ = ["AsyncClient"]


class _Connection:
    """One connection to a hub under trio: request lines out, answer lines in."""

    def __init__(self, path: Path, sock: socket.socket) -> None:
        self.path = path
        self.raw = sock  # the stdlib socket: a non-blocking peek needs it
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.buf = b""

    @classmethod
    async def open(cls, path: Path, timeout: float) -> _Connection:
        if path.parent == default_base():
            check_private_dir(path.parent, ControlClientError, "--socket")
        conn = cls(path, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        try:
            with trio.move_on_after(timeout) as scope:
                await conn.sock.connect(str(path))
        except OSError as exc:
            conn.close()
            raise connect_error(path, exc) from None
        except BaseException:
            conn.close()
            raise
        if scope.cancelled_caught:
            conn.close()
            raise ControlClientError(f"could not connect to the hub at {path} within {timeout:g}s")
        return conn

    def alive(self) -> bool:
        """Nothing to read: the hub still waits for a request (see ``_client._alive``)."""
        try:
            self.raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    async def send(self, req: dict[str, Any]) -> None:
        line = encode_request(req)
        try:
            while line:
                line = line[await self.sock.send(line) :]
        except OSError as exc:
            raise ControlClientError(
                f"lost the connection to the hub at {self.path} ({exc.strerror or exc})"
            ) from None

    async def read(self, op: str, timeout: float | None, ended: str | None = None) -> Any:
        """The next answer line (see ``control.client._Client.read``)."""
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            try:
                while b"\n" not in self.buf:
                    if len(self.buf) > MAX_ANSWER:
                        raise ControlClientError(
                            f"the hub at {self.path} sent an answer longer than {MAX_ANSWER} bytes"
                        )
                    chunk = await self.sock.recv(1 << 20)
                    if not chunk:
                        raise ControlClientError(
                            ended
                            or f"the hub at {self.path} closed the connection before answering {op}"
                        )
                    self.buf += chunk
            except OSError as exc:
                raise ControlClientError(
                    f"lost the connection to the hub at {self.path} ({exc.strerror or exc})"
                ) from None
        if scope.cancelled_caught:
            raise no_answer(self.path, op, timeout)
        line, self.buf = self.buf.split(b"\n", 1)
        return parse_answer(self.path, line)

    def close(self) -> None:
        self.sock.close()


async def _retry_busy(timeout: float, attempt: Any) -> Any:
    """``await attempt()``, again while the hub is busy, until ``timeout``."""
    deadline = trio.current_time() + timeout
    pause = 0.05
    while True:
        try:
            return await attempt()
        except HubBusy:
            if trio.current_time() + pause > deadline:
                raise
        await trio.sleep(pause)
        pause = min(1.0, pause * 2)


class AsyncClient:
    """A trio client of a running hub: :class:`~supervisor.Client`'s methods, awaited.

    Requests go over one kept connection, one at a time (tasks sharing the client take
    turns); each wait has a connection of its own, closed when it ends or is cancelled
    (the hub then drops its waiters). A hub serves 64 control connections at once by
    default: wait for many items with one :meth:`as_completed` or :meth:`wait_many`, not
    with a task per item.

    Example::

        async with AsyncClient() as hub:
            ids = [await hub.submit("worker", {"n": n}) for n in range(100)]
            async for item in hub.as_completed(ids, timeout=3600):
                print(item["id"], item["status"])

    .. versionadded:: 21
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        hub_id: str | None = None,
        timeout: float = ops.FAST_TIMEOUT,
    ) -> None:
        self.path = find_socket(socket, hub_id)
        self.timeout = timeout
        self._conn: _Connection | None = None
        self._lock = trio.Lock()

    def __repr__(self) -> str:
        return f"AsyncClient({str(self.path)!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the kept connection (the next request opens another)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        await trio.lowlevel.checkpoint()

    # ----------------------------------------------------------------------------------
    # Work (see Client for each)

    async def submit(
        self,
        agent_type: str,
        payload: Any,
        *,
        max_deliveries: int | None = None,
        require_stored: bool = False,
        **options: Any,
    ) -> str:
        """Queue an item; its id (see :meth:`Client.submit <supervisor.Client.submit>`)."""
        req = submit_request(agent_type, payload, max_deliveries, options)
        return submitted(await self._ask(req), require_stored)

    async def wait(self, item_id: str, timeout: float | None = None) -> Any:
        """The result of ``item_id`` once it has completed; :class:`ItemFailed` or
        :class:`WaitTimeout` otherwise (see :meth:`Client.wait <supervisor.Client.wait>`)."""
        return (await self.wait_many([item_id], timeout))[item_id]

    async def wait_many(self, ids: Iterable[str], timeout: float | None = None) -> dict[str, Any]:
        """The results of ``ids`` by id (see :meth:`Client.wait_many
        <supervisor.Client.wait_many>`)."""
        ids = list(ids)
        results = {}
        async with self.as_completed(ids, timeout) as items:
            async for item in items:
                results[item["id"]] = result_of(item)
        return {i: results[i] for i in ids}

    def as_completed(self, ids: Iterable[str], timeout: float | None = None) -> _Waiting:
        """Each of ``ids`` as it ends, in an ``async with ... as items: async for item
        in items`` (the block closes the wait's connection, however it ends); then
        :class:`WaitTimeout` if ``timeout`` ran out first (see :meth:`Client.as_completed
        <supervisor.Client.as_completed>`)."""
        return _Waiting(self.path, wait_request(ids, timeout), timeout)

    async def show(self, item_id: str) -> dict[str, Any]:
        """The item as ``hubvisor work show ID --json`` prints it."""
        item: dict[str, Any] = await self._ask({"op": "work_show", "id": item_id})
        return item

    async def retry(self, item_id: str) -> dict[str, Any]:
        """Queue a dead or failed item again; the item."""
        item: dict[str, Any] = await self._ask({"op": "work_retry", "id": item_id})
        return item

    async def cancel(self, item_id: str, reason: str = "") -> dict[str, Any]:
        """Cancel a queued or assigned item (``hubvisor work cancel``); the item, ended
        ``cancelled``. A :class:`ControlError` for an item that has ended."""
        req = {"op": "work_cancel", "id": item_id}
        if reason:
            req["reason"] = reason
        item: dict[str, Any] = await self._ask(req)
        return item

    async def status(self, *, cluster: bool = False) -> dict[str, Any]:
        """``hubvisor status --json``."""
        found: dict[str, Any] = await self._ask({"op": "status", "cluster": cluster or None})
        return found

    async def call(self, op: str, **fields: Any) -> Any:
        """Any op of the control table that answers once, by name; its result."""
        return await self._ask({"op": op, **fields})

    async def list(self, status: str | None = None) -> builtins.list[dict[str, Any]]:
        """The items the hub keeps (of ``status`` only, if given), oldest first."""
        items: builtins.list[dict[str, Any]] = await self._ask(
            {"op": "work_list", "status": status}
        )
        return items

    # ----------------------------------------------------------------------------------

    async def _ask(self, req: dict[str, Any]) -> Any:
        req = {k: v for k, v in req.items() if v is not None}
        async with self._lock:
            try:
                return await _retry_busy(self.timeout, lambda: self._once(req))
            except IdleClosed:  # the hub closed the kept connection idle, the request unread
                return await _retry_busy(self.timeout, lambda: self._once(req))

    async def _once(self, req: dict[str, Any]) -> Any:
        conn = self._conn
        if conn is None or not conn.alive():
            if conn is not None:
                conn.close()
            self._conn = None
            conn = self._conn = await _Connection.open(self.path, self.timeout)
        try:
            await conn.send(req)
            return (await conn.read(show_value(req.get("op")), self.timeout)).get("result")
        except HubRefused:
            raise  # answered: the connection goes on
        except BaseException:  # lost, busy, idle, or cancelled mid-answer (it would be stale)
            conn.close()
            self._conn = None
            raise


class _Waiting:
    """One wait for items on a connection of its own: ``async with`` it, iterate the items
    as they end; leaving the block closes the connection (the hub drops its waiters)."""

    def __init__(self, path: Path, req: dict[str, Any], timeout: float | None) -> None:
        self.path = path
        self.req = req
        self.timeout = timeout
        self._conn: _Connection | None = None
        self._first: dict[str, Any] = {}
        self._wait, self._ended = stream_limits(path, req, None)

    async def __aenter__(self) -> AsyncIterator[dict[str, Any]]:
        async def first() -> tuple[_Connection, dict[str, Any]]:
            conn = await _Connection.open(self.path, ops.FAST_TIMEOUT)
            try:
                await conn.send(self.req)
                return conn, await conn.read("work_wait", self._wait, self._ended)
            except BaseException:
                conn.close()
                raise

        self._conn, self._first = await _retry_busy(ops.FAST_TIMEOUT, first)
        return self._items()

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        await trio.lowlevel.checkpoint()

    async def _items(self) -> AsyncIterator[dict[str, Any]]:
        answer, late = self._first, []
        while not answer.get("end"):
            item = answer.get("item")
            if isinstance(item, dict):
                if item.get("final"):
                    yield item
                else:
                    late.append(item)
            if self._conn is None:
                raise ControlClientError("the wait's `async with` block has ended")
            answer = await self._conn.read("work_wait", self._wait, self._ended)
        if late:
            raise timed_out(late, self.timeout)
