"""Bounds that docs/bounds.md lists and no other test reaches: each is hit here, and what
the hub does there is checked (refused with the reason, dropped and counted)."""

from __future__ import annotations

import sys

import pytest
import trio

from supervisor import AgentRecord, ChildSpec, ControlError, Hub, RedisMirror

from .helpers import TIMEOUT


def test_a_payload_over_32_kib_of_json_is_refused_naming_its_size() -> None:
    hub = Hub([ChildSpec(id="a1", argv=["true"], agent_type="w")])
    with pytest.raises(ControlError, match=r"the payload is \d+ bytes of JSON, over 32768"):
        hub.work.submit("w", "x" * 40_000)
    assert [] == hub.work.items()
    assert hub.work.submit("w", "x" * 30_000).id  # under the bound: queued


async def test_registry_events_held_for_redis_are_capped_and_the_drops_counted() -> None:
    """While Redis does not answer, the mirror holds at most ``max_pending_events``
    events; the oldest go first and are counted (the latest state of each agent is kept
    apart, in the dirty set, and is never dropped)."""
    mirror = RedisMirror("redis://127.0.0.1:9/0", max_pending_events=3)
    agent = AgentRecord(
        id="a1", agent_type="w", status="idle", pid=1, hub_id="hub", supervisor="hub", spawned_at=0
    )
    for n in range(10):
        mirror.record("status", agent, f"step {n}")
        mirror.changed("a1")
    assert 7 == mirror.events_dropped
    held = [fields["detail"] for _seq, fields in mirror._events]
    assert ["step 7", "step 8", "step 9"] == held


async def test_a_tap_reader_that_falls_behind_loses_lines_counted_never_slowing_the_child() -> None:
    code = (
        "import sys\nfor i in range(200): print(i)\nsys.stdout.flush()\nimport time; time.sleep(30)"
    )
    hub = Hub([ChildSpec(id="p", argv=[sys.executable, "-c", code], shutdown=1.0)])
    async with trio.open_nursery() as nursery:
        with hub.tap_output(max_buffer=5) as lines:
            await nursery.start(hub.serve)
            with trio.fail_after(TIMEOUT):
                while len(hub.logs("p")) < 200:  # the child's lines all reached the ring
                    await trio.sleep(0.02)
            got = []
            while True:
                try:
                    got.append(lines.receive_nowait().line)
                except trio.WouldBlock:
                    break
        await hub.stop()
    assert ["0", "1", "2", "3", "4"] == got
    assert 195 == hub.output_dropped


async def test_a_metrics_request_head_over_8_kib_is_answered_400_and_closed() -> None:
    import socket

    from supervisor import MetricsService

    from .helpers import running

    metrics = MetricsService("127.0.0.1:0")
    async with running([], services=[metrics]):

        def huge_head() -> bytes:
            with socket.create_connection(("127.0.0.1", metrics.port), timeout=TIMEOUT) as s:
                # 8,193 bytes exactly: the server reads all of them before it refuses, so
                # it closes with nothing unread (a FIN, not a reset that could eat the answer).
                start = b"GET /metrics HTTP/1.1\r\nX-Pad: "
                s.sendall(start + b"p" * (8193 - len(start)))
                answer = b""
                while chunk := s.recv(4096):  # the server closes after its answer
                    answer += chunk
                return answer

        answer = await trio.to_thread.run_sync(huge_head)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"request head over 8192 bytes" in answer


async def test_a_metrics_connection_that_sends_nothing_is_closed_after_the_request_timeout() -> (
    None
):
    import socket

    from supervisor import MetricsService

    from .helpers import running

    metrics = MetricsService("127.0.0.1:0", request_timeout=0.3)
    async with running([], services=[metrics]):

        def idle() -> bytes:
            with socket.create_connection(("127.0.0.1", metrics.port), timeout=TIMEOUT) as s:
                answer = b""
                while chunk := s.recv(4096):  # blocks until the server gives up on us
                    answer += chunk
                return answer

        answer = await trio.to_thread.run_sync(idle)
    # Closed by the server (a socket timeout here would have raised): with or without a
    # word, the connection did not stay open for the client's TIMEOUT.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 ")


async def test_records_read_after_an_agent_exited_stop_at_1000_while_a_writer_floods() -> None:
    """A process left in the agent's group that keeps writing to its notify channel cannot
    stall the exit's handling: at most 1,000 queued records are read, then the reader
    moves on (docs/bounds.md, "records read after an agent exited")."""
    import select
    import socket
    import threading

    from supervisor._notify import SocketNotifySource, open_notify_pair
    from supervisor._watchdog import _DRAIN_LIMIT, ChannelWatcher

    sent = 5000
    hub_end, fd = open_notify_pair()
    writer = socket.socket(fileno=fd)

    def flood() -> None:  # blocking sends: the queue is refilled as fast as it is read
        try:
            for _ in range(sent):
                writer.send(b"HEARTBEAT")
        except OSError:  # the reader closed its end
            pass
        finally:
            writer.close()

    class Refilled(SocketNotifySource):
        """The real socket, read as if the writer were always ahead of the reader: each
        read first waits until a record (or the end) is there, so the count is exact."""

        def receive_nowait(self) -> bytes | None:
            assert self._raw is not None
            select.select([self._raw], [], [], TIMEOUT)
            return super().receive_nowait()

    source = Refilled(hub_end._sock, hub_end._raw)

    class Counting:
        """Stands in for the process actor: counts the records it is handed."""

        read = 0

        def _on_record(self, data: bytes) -> bool:
            self.read += 1
            return data == b"HEARTBEAT"

    counting = Counting()
    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        alive = ChannelWatcher._drain(counting, source)  # type: ignore[arg-type]
        assert alive
        assert counting.read == _DRAIN_LIMIT == 1000 < sent
    finally:
        source.close()
        thread.join(TIMEOUT)
