"""The client library for schedulers: :class:`Client`, blocking, over a running hub's
control socket (:class:`~supervisor.AsyncClient` is its trio twin).

Stdlib only (no trio, no hub): a program that only submits and waits imports little.
What the two clients share (finding the hub, building requests, reading what a wait
gives) lives here.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import socket
from collections.abc import Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._errors import ItemFailed, NotStored, WaitTimeout
from .control import ops
from .control.client import (
    HubRefused,
    IdleClosed,
    _Client,
    _connect,
    _retry_busy,
    stream,
)
from .control.paths import default_socket_path, env_socket_path

__all__ = ["Client"]


# --------------------------------------------------------------------------------------
# Shared by Client and AsyncClient


def find_socket(socket_path: str | os.PathLike[str] | None, hub_id: str | None) -> Path:
    """Where the hub listens, found as ``hubvisor`` finds it: ``socket_path``, else the
    default path of ``hub_id``, else :func:`~supervisor.control.paths.env_socket_path`."""
    if socket_path is not None:
        return Path(socket_path)
    if hub_id is not None:
        return default_socket_path(hub_id)
    return env_socket_path()


def submit_request(
    agent_type: str, payload: Any, max_deliveries: int | None, options: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``submit`` request; an option given as ``None`` is left out (the hub's default)."""
    req = {"op": "submit", "type": agent_type, "payload": payload}
    fields = {"max_deliveries": max_deliveries, **options}
    req.update({k: v for k, v in fields.items() if v is not None})
    return req


def submitted(item: Mapping[str, Any], require_stored: bool) -> str:
    """The id of a submitted item, or :class:`NotStored` when asked for and it is not."""
    if require_stored and item.get("stored") is False:
        raise NotStored(str(item["id"]))
    return str(item["id"])


def wait_request(ids: Iterable[str], timeout: float | None) -> dict[str, Any]:
    """The ``work_wait`` request for ``ids`` (each once, in order)."""
    wanted = list(dict.fromkeys(ids))
    if not wanted or not all(isinstance(i, str) for i in wanted):
        raise ValueError(f"give one work item id or more, as strings (got {wanted!r:.80})")
    req: dict[str, Any] = {"op": "work_wait", "ids": wanted}
    if timeout is not None:
        req["timeout"] = timeout
    return req


def result_of(item: Mapping[str, Any]) -> Any:
    """A completed item's result; :class:`ItemFailed` for an item that ended otherwise."""
    if item.get("status") != "completed":
        raise ItemFailed(item)
    return item.get("result")


def timed_out(late: Sequence[Mapping[str, Any]], timeout: float | None) -> WaitTimeout:
    """The error of a wait that gave up on ``late`` (items not ended, as the hub saw them)."""
    return WaitTimeout([str(i["id"]) for i in late], timeout or 0.0, [dict(i) for i in late])


# --------------------------------------------------------------------------------------


class Client:
    """A blocking client of a running hub, for schedulers and scripts.

    It finds the hub as ``hubvisor`` does: ``socket``, else the default socket of
    ``hub_id``, else ``$HUBVISOR_SOCKET``, else the hub id ``hub``'s. Requests go over
    one connection, kept open between them (opened again when the hub closed it as
    idle), so a thousand submits cost one connect, not a thousand processes. Each wait
    has a connection of its own, closed when it ends. Not thread-safe: one per thread.

    Args:
        socket: the hub's control socket (a path).
        hub_id: the id of the hub (its root spec's name), for its default socket.
        timeout: seconds to wait for each answer (not for waits: see :meth:`wait`).

    Raises (from every method):
        NoHubRunning: nothing listens at the socket.
        ControlClientError: the hub refused a request (its error names the value and
            the fix), did not answer in time, or the connection was lost.

    Example::

        with Client() as hub:
            ids = [hub.submit("worker", {"n": n}) for n in range(100)]
            for item in hub.as_completed(ids, timeout=3600):
                print(item["id"], item["status"], item["result"])

    Operations the table gains (``work_cancel``, say) are :meth:`call` away until they
    get a method of their own: one line, as :meth:`show` is.

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
        self._conn: _Client | None = None

    def __repr__(self) -> str:
        return f"Client({str(self.path)!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept connection (the next request opens another)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ----------------------------------------------------------------------------------
    # Work

    def submit(
        self,
        agent_type: str,
        payload: Any,
        *,
        max_deliveries: int | None = None,
        require_stored: bool = False,
        **options: Any,
    ) -> str:
        """Queue an item for agents of ``agent_type``; its id.

        Args:
            agent_type: the agent type that does it.
            payload: the work, any JSON value.
            max_deliveries: deliveries before it is dead-lettered (default: the hub's).
            require_stored: raise :class:`NotStored` when the hub's store did not make
                the item durable in time (Redis did not answer; the hub holds it and
                writes it later). By default the id is returned all the same.
            options: any other field of the hub's ``submit`` (the hub refuses those it
                does not know, naming them); ``None`` leaves one out.

        Raises:
            NotStored: with ``require_stored``, the item is not durable yet (it is
                queued: do not submit it again).
        """
        item = self._ask(submit_request(agent_type, payload, max_deliveries, options))
        return submitted(item, require_stored)

    def wait(self, item_id: str, timeout: float | None = None) -> Any:
        """The result of ``item_id`` once it has completed.

        Raises:
            ItemFailed: it ended otherwise (failed, dead...): its ``status``, ``error``,
                ``history`` and the whole ``item``.
            WaitTimeout: ``timeout`` seconds passed first (the item goes on).
        """
        return self.wait_many([item_id], timeout)[item_id]

    def wait_many(self, ids: Iterable[str], timeout: float | None = None) -> dict[str, Any]:
        """The results of ``ids`` once each has completed, by id (in the order given).

        Raises:
            ItemFailed: the first of them to end without completing (the others are no
                longer waited for).
            WaitTimeout: ``timeout`` ran out before all ended (it names those).
        """
        ids = list(ids)
        with contextlib.closing(self.as_completed(ids, timeout)) as items:
            results = {item["id"]: result_of(item) for item in items}
        return {i: results[i] for i in ids}

    def as_completed(
        self, ids: Iterable[str], timeout: float | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """Each of ``ids`` as it ends (whatever its status: look at ``item["status"]``),
        those already ended first; one connection for all of them, closed when the
        iteration ends (stopping early: ``close()`` the iterator, or use it in
        ``contextlib.closing``, so the hub stops waiting at once).

        Raises:
            WaitTimeout: after the items that ended, when ``timeout`` ran out before the
                others did (it names them, as last seen).
        """
        req = wait_request(ids, timeout)
        late = []
        with contextlib.closing(stream(self.path, req)) as answers:
            for answer in answers:
                item = answer.get("item")
                if isinstance(item, dict):
                    if item.get("final"):
                        yield item
                    else:
                        late.append(item)
        if late:
            raise timed_out(late, timeout)

    def show(self, item_id: str) -> dict[str, Any]:
        """The item as ``hubvisor work show ID --json`` prints it."""
        item: dict[str, Any] = self._ask({"op": "work_show", "id": item_id})
        return item

    def retry(self, item_id: str) -> dict[str, Any]:
        """Queue a dead or failed item again, its deliveries reset; the item."""
        item: dict[str, Any] = self._ask({"op": "work_retry", "id": item_id})
        return item

    def cancel(self, item_id: str, reason: str = "") -> dict[str, Any]:
        """Cancel a queued or assigned item (``hubvisor work cancel``); the item, ended
        ``cancelled``. A :class:`ControlError` for an item that has ended."""
        req = {"op": "work_cancel", "id": item_id}
        if reason:
            req["reason"] = reason
        item: dict[str, Any] = self._ask(req)
        return item

    def status(self, *, cluster: bool = False) -> dict[str, Any]:
        """``hubvisor status --json``: the hub, its work counts and agents (``cluster``:
        also every hub sharing its Redis)."""
        found: dict[str, Any] = self._ask({"op": "status", "cluster": cluster or None})
        return found

    def call(self, op: str, **fields: Any) -> Any:
        """Any op of the control table that answers once, by name (``None`` fields are
        left out); its result, within the client's ``timeout``. E.g. ``call("count")``,
        ``call("resize", pool="worker", size=4)``."""
        return self._ask({"op": op, **{k: v for k, v in fields.items() if v is not None}})

    # Last: the method named ``list`` shadows the builtin in the class body.
    def list(self, status: str | None = None) -> builtins.list[dict[str, Any]]:
        """The items the hub keeps (of ``status`` only, if given), oldest first."""
        items: builtins.list[dict[str, Any]] = self._ask({"op": "work_list", "status": status})
        return items

    # ----------------------------------------------------------------------------------
    # The kept connection

    def _ask(self, req: dict[str, Any]) -> Any:
        req = {k: v for k, v in req.items() if v is not None}
        try:
            return _retry_busy(lambda: self._once(req), self.timeout)
        except IdleClosed:  # the hub closed the kept connection as idle, the request unread
            return _retry_busy(lambda: self._once(req), self.timeout)

    def _once(self, req: dict[str, Any]) -> Any:
        conn = self._conn
        if conn is None or not _alive(conn.sock):
            self.close()
            conn = self._conn = _connect(self.path, self.timeout)
        try:
            return conn.ask(req, self.timeout)
        except HubRefused:
            raise  # answered: the connection goes on
        except BaseException:  # lost, busy, idle, or Ctrl-C mid-answer (it would be stale)
            self.close()
            raise


def _alive(sock: socket.socket) -> bool:
    """Whether a kept connection may carry a request: nothing to read on it (a hub that
    closed it as idle left its goodbye line, or the end of the stream, there)."""
    was = sock.gettimeout()
    sock.settimeout(0.0)  # with a timeout, recv would wait for data first
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True  # nothing there: the hub still waits for a request
    except OSError:
        return False
    finally:
        sock.settimeout(was)
    return False
