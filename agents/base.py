"""``BaseAgent``: a trio program that takes work from its hub (agent protocol v2).

A subclass overrides only the work::

    class Doubler(BaseAgent):
        agent_type = "doubler"

        def validate_assignment(self, payload: JSON) -> None:
            if not isinstance(payload, int):
                raise ValueError("payload must be an integer")

        async def do_work(self, assignment: Assignment) -> JSON:
            await assignment.progress(0.5, checkpoint={"half": True})
            return assignment.payload * 2

    if __name__ == "__main__":
        Doubler.main()

The lifecycle (``docs/agent-protocol.md`` has the protocol itself):

1. Open the channel the hub passed in ``HUBVISOR_NOTIFY_FD`` and send ``HELLO=2`` and
   ``READY``.
2. Heartbeat every ``HUBVISOR_HEARTBEAT_INTERVAL`` seconds (default 1) in a task of its
   own, whatever ``do_work`` is doing, as long as it does not block the event loop: run
   CPU-bound or blocking work with ``trio.to_thread.run_sync(..., abandon_on_cancel=True)``.
   A ``PING`` is answered with ``HEARTBEAT`` at once.
3. For each ``ASSIGN``: ``validate_assignment(payload)`` (an exception sends ``FAIL`` with
   ``retry=false``), then ``await do_work(assignment)`` (an exception sends ``FAIL`` with
   ``retry=true``; :class:`HandBack` hands the item back), then ``RESULT`` with what it
   returned. ``assignment.progress(...)`` sends ``PROGRESS`` with a checkpoint that the
   next attempt of the item receives in ``assignment.checkpoint``;
   ``assignment.submit(type, payload)`` sends ``SUBMIT`` (new work), always before the
   item's ``RESULT``.
4. On ``STOP`` or SIGTERM (or SIGINT): finish the held item within the grace (the shutdown
   timeout ``HUBVISOR_SHUTDOWN``, default 5 s, minus a margin) or hand it back (an
   exception ``do_work`` raises once the stop came is a hand-back too: a subprocess
   killed by the stop is no failure of the item), wait a
   moment (at most 0.25 s) for the hub's ``ACK`` of it, and exit 0. When the hub closes
   the channel the agent exits 0 at once.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

import trio

from . import _protocol as proto
from ._protocol import CREDS_SPACE, JSON

__all__ = ["JSON", "Assignment", "BaseAgent", "HandBack"]

_KEEP: Any = object()  # progress()'s "no new checkpoint"


class HandBack(Exception):
    """Raise from ``do_work`` to give the item back unfinished (``HANDBACK``); the hub
    offers it again without spending an attempt."""


class RetryAfter(Exception):
    """Raise from ``do_work`` to fail the attempt and ask the hub to deliver the item
    again no sooner than ``seconds`` from now (``FAIL`` with ``retry_after``), e.g. on
    a rate limit: ``raise RetryAfter(30, "rate limited")``. It spends a delivery."""

    def __init__(self, seconds: float, message: str = "") -> None:
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not 0 <= seconds < 1e9
        ):
            raise ValueError(f"RetryAfter needs seconds >= 0 (got {seconds!r:.64})")
        super().__init__(message or f"retry after {seconds:g} s")
        self.seconds = float(seconds)


class Assignment:
    """One item the hub assigned, as ``do_work`` sees it.

    What comes from the hub (:attr:`payload`, :attr:`checkpoint`) is typed ``Any``, as
    ``json.loads`` returns it: check its shape in :meth:`BaseAgent.validate_assignment`.
    What goes back (``do_work``'s result, :meth:`progress`, :meth:`submit`) is typed
    :data:`JSON`, so ``mypy --strict`` refuses e.g. a ``set`` there.
    """

    __slots__ = ("_agent", "_checkpoint_sent", "attempt", "checkpoint", "item", "payload", "type")

    def __init__(self, agent: BaseAgent, assign: proto.Assign) -> None:
        self._agent = agent
        self.item: str = assign.item
        """The item's id, as ``hubvisor submit`` printed it."""
        self.attempt: int = assign.attempt
        """Which delivery of the item this is: 1 for the first, more when an earlier
        attempt's agent crashed or hung, or it failed with ``retry``."""
        self.type: str = assign.type
        """The agent type the item was submitted for."""
        self.payload: Any = assign.payload
        """The item's payload: the JSON value given to ``submit`` (dict, list, str,
        int, float, bool or None), the same on every attempt."""
        self.checkpoint: Any = assign.checkpoint
        """The last checkpoint an earlier attempt of this item sent with
        :meth:`progress` (JSON), or ``None`` on a first attempt or when there was none."""
        self._checkpoint_sent: JSON = assign.checkpoint

    @property
    def stopping(self) -> bool:
        """Whether the agent was asked to stop: finish soon, or raise :class:`HandBack`."""
        return self._agent.stop_requested

    async def progress(self, value: JSON = None, *, checkpoint: JSON = _KEEP) -> None:
        """Report progress (any JSON, e.g. a fraction) and, if given, a new checkpoint.

        ``PROGRESS`` always carries the latest checkpoint (the one given here, else the
        last one sent, else the one this attempt received), so the hub never loses it.

        Raises:
            agents._protocol.InvalidNotifyMessage: ``value`` or ``checkpoint`` is not
                JSON, or the record is over 64 KiB (keep checkpoints small).
        """
        if checkpoint is not _KEEP:
            self._checkpoint_sent = checkpoint
        await self._agent._send(
            proto.progress(self.item, self.attempt, value, self._checkpoint_sent)
        )

    async def submit(
        self,
        agent_type: str,
        payload: JSON,
        *,
        key: str | None = None,
        after: list[str] | tuple[str, ...] = (),
        priority: int = 0,
        delay: float | None = None,
        require: Mapping[str, str] | None = None,
        time_limit: float | None = None,
    ) -> None:
        """Submit new work for agents of ``agent_type`` (``SUBMIT``).

        Args:
            key: an idempotency key: while an item of ``agent_type`` with it is kept, the
                hub creates no other (a retried attempt submitting again is harmless).
            after: the items the new one waits for: ids, or ``TYPE:KEY`` for an item
                submitted with a key (an agent does not learn the ids of its submits).
            priority, delay, require, time_limit: as for ``hubvisor submit``
                (docs/work-controls.md); a value the hub refuses is logged by the hub.

        Raises:
            agents._protocol.InvalidNotifyMessage: a bad type, a payload that is not JSON,
                or a record over 64 KiB.
        """
        record = proto.submit(
            agent_type,
            payload,
            key=key,
            after=after,
            priority=priority,
            delay=delay,
            require=require,
            time_limit=time_limit,
        )
        await self._agent._send(record)

    def __repr__(self) -> str:
        return f"Assignment(item={self.item!r}, attempt={self.attempt}, type={self.type!r})"


class _Channel:
    """The agent's end of its SOCK_SEQPACKET channel: one ``send`` is one record."""

    def __init__(self, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        try:
            if sock.type != socket.SOCK_SEQPACKET:
                raise OSError(f"descriptor {fd} is not a SOCK_SEQPACKET socket")
            proto.enable_credentials(sock)
        except BaseException:
            sock.detach()  # not ours to close
            raise
        self._raw = sock
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._lock = trio.Lock()
        self.last_send = -math.inf
        self.gone = trio.Event()

    async def send(self, data: bytes) -> None:
        """Send one record; on a closed channel set :attr:`gone` instead of raising."""
        async with self._lock:
            if self.gone.is_set():
                return
            try:
                await self._sock.send(data)
            except OSError:
                self.gone.set()
                return
        self.last_send = trio.current_time()

    async def receive(self) -> bytes | None:
        """One record from the hub, or ``None`` once the hub closed its end."""
        for _ in range(2):
            try:
                data, ancdata, flags, _ = await self._sock.recvmsg(
                    proto.MAX_MESSAGE + 1, CREDS_SPACE
                )
            except ConnectionResetError:
                # The hub closed its end with our records unread: Linux reports that
                # once; what the hub sent before is still there to read.
                continue
            except OSError:
                return None
            return proto.record_or_eof(data, ancdata, flags)
        return None

    def close(self) -> None:
        """Read what the hub sent and nobody took, then close: closing with records
        unread would make the hub's next receive fail with ECONNRESET."""
        for _ in range(1000):
            try:
                if not self._raw.recv(proto.MAX_MESSAGE + 1, socket.MSG_DONTWAIT):
                    break
            except OSError:
                break
        self._sock.close()


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if value >= 0 and not math.isnan(value) else default


class BaseAgent:
    """A work-taking agent: subclass it and override :meth:`validate_assignment` and
    :meth:`do_work` (and, optionally, :attr:`agent_type`); run it with :meth:`main`.

    Configured from the environment the hub sets (``env`` replaces ``os.environ``):

    * ``HUBVISOR_NOTIFY_FD``: the channel (required).
    * ``HUBVISOR_AGENT_ID``, ``HUBVISOR_AGENT_TYPE``, ``HUBVISOR_HUB_ID``,
      ``HUBVISOR_SUPERVISOR``, ``REDIS_URL``: kept as :attr:`agent_id`,
      :attr:`agent_type`, :attr:`hub_id`, :attr:`supervisor`, :attr:`redis_url`.
    * ``HUBVISOR_HEARTBEAT_INTERVAL``: seconds between heartbeats (default 1.0).
    * ``HUBVISOR_SHUTDOWN``: the shutdown timeout in seconds (default 5.0); a stopping
      agent gives its held item :attr:`grace` seconds (the timeout minus a margin).
    """

    agent_type: str = "agent"
    """The agent type; ``HUBVISOR_AGENT_TYPE`` overrides it."""

    report_status: bool = True
    """Send ``STATUS=busy`` while holding an item and ``STATUS=idle`` after it."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.env: Mapping[str, str] = env
        self.agent_type = env.get("HUBVISOR_AGENT_TYPE") or type(self).agent_type
        self.agent_id: str = env.get("HUBVISOR_AGENT_ID") or self.agent_type
        self.hub_id: str | None = env.get("HUBVISOR_HUB_ID")
        self.supervisor: str | None = env.get("HUBVISOR_SUPERVISOR")
        self.redis_url: str | None = env.get("REDIS_URL")
        self.heartbeat_interval: float = max(
            0.01, _seconds(env, "HUBVISOR_HEARTBEAT_INTERVAL", 1.0)
        )
        self.shutdown_timeout: float = _seconds(env, "HUBVISOR_SHUTDOWN", 5.0)
        margin = min(1.0, max(0.05, 0.2 * self.shutdown_timeout))
        self.grace: float = max(0.0, self.shutdown_timeout - margin)
        """Seconds a stopping agent gives its held item before handing it back."""
        self._margin = margin
        self._fd = env.get(proto.NOTIFY_FD_ENV)
        self._chan: _Channel | None = None
        self._stop_at: float | None = None
        self._stop_seen = trio.Event()
        self._busy = False  # an ASSIGN was taken and not yet finished
        self._idle_scope: trio.CancelScope | None = None
        self._work_scope: trio.CancelScope | None = None
        self._holding: tuple[str, int] | None = None  # the item do_work runs, if any
        self._cancelled: tuple[str, int] | None = None  # the item the hub cancelled
        self._last_final: tuple[str, int] | None = None
        self._last_final_acked = trio.Event()
        self._last_final_at = -math.inf
        self._assign_send, self._assign_recv = trio.open_memory_channel[proto.Assign](math.inf)

    # ----------------------------------------------------------------------------------
    # What subclasses override

    def validate_assignment(self, payload: Any) -> None:
        """Check an item's payload (JSON, typed ``Any`` as ``json.loads`` returns it)
        before any work; raise (any Exception) to refuse it.

        A refusal is final: ``FAIL`` with ``retry=false`` and the exception's text.
        """

    async def do_work(self, assignment: Assignment) -> JSON:
        """Do the work of ``assignment`` and return its result (JSON).

        An exception sends ``FAIL`` with ``retry=true`` (the hub may deliver the item
        again), or ``HANDBACK`` once the agent was asked to stop; :class:`HandBack`
        gives the item back. Do not block the event loop: run
        blocking work in ``trio.to_thread.run_sync(..., abandon_on_cancel=True)``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not override do_work")

    # ----------------------------------------------------------------------------------
    # Running

    @classmethod
    def main(cls) -> NoReturn:
        """Run an agent of this class as the program and exit with its status."""
        sys.exit(trio.run(cls().run))

    @property
    def stop_requested(self) -> bool:
        """Whether ``STOP`` or SIGTERM arrived."""
        return self._stop_at is not None

    def log(self, message: str) -> None:
        """Print one line, prefixed with the agent id, to standard error."""
        print(f"{self.agent_id}: {message}", file=sys.stderr, flush=True)

    def request_stop(self, why: str = "asked to stop") -> None:
        """Stop: finish the held item within :attr:`grace` or hand it back, then exit 0."""
        if self._stop_at is not None:
            return
        self._stop_at = trio.current_time()
        self._stop_seen.set()
        self.log(f"stopping ({why})")
        if self._idle_scope is not None:
            self._idle_scope.cancel()
        if self._work_scope is not None:
            self._work_scope.deadline = min(self._work_scope.deadline, self._stop_at + self.grace)

    async def run(self) -> int:
        """The agent's life, from ``HELLO`` to its exit status (0 after a stop or when
        the hub goes away, 2 without a usable channel)."""
        if self._fd is None or not self._fd.isdigit():
            self.log(
                f"no hub channel: {proto.NOTIFY_FD_ENV} is {self._fd!r}; run me under hubvisor"
            )
            return 2
        try:
            chan = _Channel(int(self._fd))
        except OSError as exc:
            self.log(f"cannot use {proto.NOTIFY_FD_ENV}={self._fd}: {exc}")
            return 2
        self._chan = chan
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_channel, nursery.cancel_scope)
                await nursery.start(self._signals)
                await chan.send(proto.hello())
                await chan.send(proto.ready())
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._receive)
                await self._work_loop()
                await self._wait_final_ack()
                nursery.cancel_scope.cancel()
        finally:
            chan.close()
        return 0

    async def _send(self, data: bytes) -> None:
        assert self._chan is not None, "the agent is not running"
        await self._chan.send(data)

    async def _watch_channel(self, scope: trio.CancelScope) -> None:
        assert self._chan is not None
        await self._chan.gone.wait()
        self.log("the hub closed the channel; exiting")
        scope.cancel()

    async def _signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                self.request_stop(signal.Signals(signum).name)

    async def _heartbeats(self) -> None:
        assert self._chan is not None
        while True:
            # Any record is a heartbeat: send one only when nothing went out for a while.
            wait = self._chan.last_send + self.heartbeat_interval - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
            else:
                await self._chan.send(proto.heartbeat())

    async def _receive(self) -> None:
        assert self._chan is not None
        while True:
            data = await self._chan.receive()
            if data is None:
                self._chan.gone.set()
                return
            try:
                message = proto.decode(data)
            except proto.InvalidNotifyMessage as exc:
                self.log(f"ignoring a record from the hub: {exc}")
                continue
            if isinstance(message, proto.Ping):
                await self._chan.send(proto.heartbeat())
            elif isinstance(message, proto.Stop):
                self.request_stop("STOP from the hub")
            elif isinstance(message, proto.Cancel):
                self._cancel(message)
            elif isinstance(message, proto.Ack):
                if not message.accepted:
                    self.log(
                        f"the hub refused item {message.item} attempt {message.attempt}: "
                        f"{message.reason or 'no reason given'}"
                    )
                if self._last_final == (message.item, message.attempt):
                    self._last_final_acked.set()
            elif self._busy or self._stop_at is not None:
                why = "stopping" if self._stop_at is not None else "already holding an item"
                self.log(f"handing back item {message.item} attempt {message.attempt}: {why}")
                await self._final(
                    message.item, message.attempt, proto.handback(message.item, message.attempt)
                )
            else:
                self._busy = True
                self._holding = (message.item, message.attempt)
                self._assign_send.send_nowait(message)

    def _cancel(self, message: proto.Cancel) -> None:
        """``CANCEL``: cancel ``do_work`` if it runs that item's attempt (else ignore it: the
        answer that ended it already went out, and tells the hub)."""
        if self._holding != (message.item, message.attempt):
            return
        self.log(
            f"item {message.item} attempt {message.attempt} cancelled by the hub: "
            f"{message.reason or 'no reason given'}"
        )
        self._cancelled = self._holding
        if self._work_scope is not None:
            self._work_scope.cancel()

    async def _work_loop(self) -> None:
        while self._stop_at is None:
            with trio.CancelScope() as scope:
                self._idle_scope = scope
                assign = await self._assign_recv.receive()
            self._idle_scope = None
            if scope.cancelled_caught:
                break
            await self._handle(assign)
        while True:  # taken before the stop was seen: give them back
            try:
                assign = self._assign_recv.receive_nowait()
            except trio.WouldBlock:
                break
            await self._final(
                assign.item, assign.attempt, proto.handback(assign.item, assign.attempt)
            )

    async def _final(self, item: str, attempt: int, record: bytes) -> None:
        """Send the record that ends an attempt (RESULT, FAIL, HANDBACK)."""
        self._last_final = (item, attempt)
        self._last_final_acked = trio.Event()
        await self._send(record)
        self._last_final_at = trio.current_time()

    async def _handle(self, assign: proto.Assign) -> None:
        assignment = Assignment(self, assign)
        item, attempt = assign.item, assign.attempt
        if self.report_status:
            await self._send(proto.status("busy"))
        try:
            self.validate_assignment(assign.payload)
        except Exception as exc:
            self.log(f"item {item} attempt {attempt} refused: {_describe(exc)}")
            await self._finish(
                item, attempt, proto.fail(item, attempt, _describe(exc), retry=False)
            )
            return
        failure: Exception | None = None
        value: JSON = None
        with trio.CancelScope() as scope:
            self._work_scope = scope
            self._holding = (item, attempt)
            if self._cancelled == self._holding:  # CANCEL came before do_work started
                scope.cancel()
            if self._stop_at is not None:
                scope.deadline = self._stop_at + self.grace
            try:
                value = await self.do_work(assignment)
            except Exception as exc:
                failure = exc
        self._work_scope = None
        self._holding = None
        if self._cancelled == (item, attempt):
            self._cancelled = None
            await self._finish(item, attempt, proto.fail(item, attempt, "cancelled", retry=False))
            return
        if failure is not None and not isinstance(failure, HandBack) and self._stop_at is None:
            # A stop signal sent to the whole process group (kill_mode="group", Ctrl-C in
            # a terminal) can kill a subprocess of do_work before this process has seen
            # the signal: give it a moment to arrive before calling this a failure.
            with trio.move_on_after(_STOP_RACE):
                await self._stop_seen.wait()
        if scope.cancelled_caught or isinstance(failure, HandBack):
            self.log(f"item {item} attempt {attempt} handed back")
            record = proto.handback(item, attempt)
        elif failure is not None and self._stop_at is not None:
            # Interrupted by the stop (its subprocess was signalled too, say): the attempt
            # did not fail, it was cut short; another agent takes the item again.
            self.log(f"item {item} attempt {attempt} handed back: stopped ({_describe(failure)})")
            record = proto.handback(item, attempt)
        elif failure is not None:
            self.log(f"item {item} attempt {attempt} failed: {_describe(failure)}")
            after = failure.seconds if isinstance(failure, RetryAfter) else None
            record = proto.fail(item, attempt, _describe(failure), retry=True, retry_after=after)
        else:
            try:
                record = proto.result(item, attempt, value)
            except proto.InvalidNotifyMessage as exc:
                self.log(f"item {item} attempt {attempt}: cannot send its result: {exc}")
                record = proto.fail(item, attempt, f"result not sendable: {exc}", retry=False)
        await self._finish(item, attempt, record)

    async def _finish(self, item: str, attempt: int, record: bytes) -> None:
        """End the held item's attempt: the agent holds nothing from here on (the hub may
        assign the next item as soon as it has the record)."""
        if self.report_status and self._stop_at is None:
            await self._send(proto.status("idle"))
        self._busy = False
        await self._final(item, attempt, record)

    async def _wait_final_ack(self) -> None:
        """After a stop, give the hub a moment to answer a RESULT/FAIL/HANDBACK sent just
        now (an ``ACK``; a hub may answer only refusals, so the wait is short)."""
        if self._last_final is None or self._last_final_acked.is_set():
            return
        now = trio.current_time()
        if now - self._last_final_at > _ACK_WAIT:
            return
        start = self._stop_at if self._stop_at is not None else now
        deadline = min(start + self.grace + self._margin / 2, now + _ACK_WAIT)
        with trio.move_on_at(deadline):
            await self._last_final_acked.wait()


_ACK_WAIT = 0.25
"""Seconds a stopping agent waits for the ACK of its last RESULT/FAIL/HANDBACK."""

_STOP_RACE = 0.1
"""Seconds a failed ``do_work`` waits for a stop signal that may be on its way."""


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:2000]
