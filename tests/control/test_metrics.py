"""The metrics service with real agents: scraped over HTTP, parsed with prometheus_client."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from strategies import FixedBackoff, Intensity
from supervisor import ChildSpec, ChildState, ConfigError, Hub, ItemStatus, PoolSpec, Registry
from supervisor._metrics import MetricsService, parse_address
from supervisor._proc import sample_groups

from .. import raw_agent
from ..helpers import PY, TIMEOUT, is_, running, until, wait_all, wait_event

# tests/raw_agent.py, with a `sleep` in its group (so the group has two processes).
AGENT_ARGV = raw_agent.argv("--group-sleeper")


def pool(size: int = 2) -> PoolSpec:
    template = ChildSpec(
        id="w",
        argv=AGENT_ARGV,
        shutdown=2.0,
        heartbeat_timeout=5.0,
        ready="notify",
    )
    return PoolSpec(agent_type="w", template=template, size=size)


def get(url: str) -> tuple[int, str, str]:
    """GET ``url``: status, content type, body (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(metrics: MetricsService) -> Samples:
    """Scrape the endpoint over HTTP and parse it with prometheus_client's parser."""
    status, kind, text = await trio.to_thread.run_sync(get, metrics.url)
    assert 200 == status
    assert kind.startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape_until(metrics: MetricsService, ready: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``ready`` holds: the service reads the bus in its own task, so the
    last events may reach it a moment after the test saw them."""
    found: Samples = {}
    with trio.move_on_after(TIMEOUT):
        while True:
            found = await scrape(metrics)
            if ready(found):
                return found
            await trio.sleep(0.05)
    raise AssertionError(f"the scrapes never got there; the last one: {found}")


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def running_agents(hub: Hub) -> set[str]:
    rows = hub.which_children()
    return {
        r.info.id for r in rows if r.info.kind == "worker" and r.info.state is ChildState.RUNNING
    }


async def finish(hub: Hub, events: Any, n: int) -> None:
    """Wait until ``n`` items are completed."""
    with trio.fail_after(TIMEOUT):
        while len(hub.work.items(ItemStatus.COMPLETED)) < n:
            await wait_event(events, lambda e: e.kind.startswith("work_"))


class TestScrape:
    async def test_work_restarts_exits_and_agents_are_counted(self) -> None:
        """Six items (one crashing its agent once) and one SIGKILL: the scrape counts 6
        submitted and completed, 7 deliveries, one reclaim at exit, two restarts, one exit
        with a non-zero code and one by SIGKILL; both agents idle with empty queues."""
        metrics = MetricsService("127.0.0.1:0")
        async with running([pool()], services=[metrics]) as (hub, events):
            await wait_all(events, is_("running", "w-agent-1"), is_("running", "w-agent-2"))
            for n in range(5):
                hub.work.submit("w", {"n": n})
            hub.work.submit("w", {"crash": True})
            await finish(hub, events, 6)
            await until(lambda: running_agents(hub) == {"w-agent-1", "w-agent-2"})
            victim = hub.registry.get("w-agent-1")
            assert victim is not None
            os.killpg(victim.pid, signal.SIGKILL)
            await wait_event(events, is_("exited", "w-agent-1", pid=victim.pid))
            await wait_event(events, is_("running", "w-agent-1"))
            await hub.registry.sync()

            found = await scrape_until(
                metrics,
                lambda s: (
                    value(s, "hubvisor_exits_total", type="w", reason="SIGKILL") == 1
                    and value(s, "hubvisor_agents", type="w", status="idle") == 2
                ),
            )

            assert 6 == value(found, "hubvisor_work_submitted_total", type="w")
            assert 6 == value(found, "hubvisor_work_completed_total", type="w")
            assert 7 == value(found, "hubvisor_work_assigned_total", type="w")
            assert 1 == value(found, "hubvisor_work_reclaimed_total", type="w", reason="exit")
            assert 0 == value(found, "hubvisor_work_dead_lettered_total", type="w")
            assert 2 == value(found, "hubvisor_restarts_total", type="w")
            assert 1 == value(found, "hubvisor_exits_total", type="w", reason="exit_nonzero")
            assert 0 == value(found, "hubvisor_failed_starts_total", type="w")
            assert 7 == value(found, "hubvisor_work_wait_seconds_count", type="w")
            assert 6 == value(
                found, "hubvisor_work_run_seconds_count", type="w", outcome="completed"
            )
            assert 1 == value(
                found, "hubvisor_work_run_seconds_count", type="w", outcome="reclaimed"
            )
            assert 0 == value(found, "hubvisor_work_queue_depth", type="w")
            assert 0 == value(found, "hubvisor_work_in_flight", type="w")
            assert 0 == value(found, "hubvisor_events_dropped_total")
            assert {"idle"} == {
                dict(labels)["status"] for labels in labelled(found, "hubvisor_agents")
            }
            # Each agent's group is the python agent and its `sleep`: two processes,
            # megabytes resident, some CPU, a heartbeat within the last seconds.
            for agent in ("w-agent-1", "w-agent-2"):
                assert 2 == value(found, "hubvisor_agent_processes", agent=agent, type="w")
                rss = value(found, "hubvisor_agent_resident_bytes", agent=agent, type="w")
                assert rss is not None and 4 << 20 < rss < 1 << 30
                cpu = value(found, "hubvisor_agent_cpu_seconds_total", agent=agent, type="w")
                assert cpu is not None and 0 < cpu < 60
                name = "hubvisor_agent_last_heartbeat_timestamp_seconds"
                beat = value(found, name, agent=agent, type="w")
                assert beat is not None and 0 <= time.time() - beat < 5

    async def test_hangs_and_spawn_failures_are_counted_by_type(self) -> None:
        """An agent that goes silent holding an item: one hang, one exit with reason
        hang, the item reclaimed for hang and completed on attempt 2; a child whose
        program does not exist: a spawn failure of its type."""
        metrics = MetricsService("127.0.0.1:0")
        hangy = ChildSpec(
            id="hangy", argv=AGENT_ARGV, agent_type="h", heartbeat_timeout=2.0,
            shutdown=1.0, ready="notify",
        )  # fmt: skip
        ghost = ChildSpec(
            id="ghost", argv=["/nonexistent/hubvisor-agent"], agent_type="g", restart="temporary"
        )
        async with running([hangy, ghost], services=[metrics]) as (hub, events):
            await wait_event(events, is_("running", "hangy"))
            item = hub.work.submit("h", {"hang": True})
            await finish(hub, events, 1)
            assert 2 == hub.work.get(item.id).attempt
            found = await scrape_until(
                metrics,
                lambda s: (
                    value(s, "hubvisor_work_completed_total", type="h") == 1
                    and value(s, "hubvisor_spawn_failures_total", type="g") == 1
                ),
            )
            assert 1 == value(found, "hubvisor_hangs_total", type="h")
            assert 1 == value(found, "hubvisor_exits_total", type="h", reason="hang")
            assert 1 == value(found, "hubvisor_work_reclaimed_total", type="h", reason="hang")
            assert 1 == value(found, "hubvisor_restarts_total", type="h")
            assert 0 == value(found, "hubvisor_hangs_total", type="g")

    async def test_queued_items_show_as_depth_and_no_item_id_is_a_label(self) -> None:
        """Items of a type with no agent running wait: the depth gauge shows them; no
        label of any sample holds an item id, and no `_created` series is served."""
        metrics = MetricsService("127.0.0.1:0")
        async with running([pool(size=0)], services=[metrics]) as (hub, events):
            ids = [hub.work.submit("w", {"n": n}).id for n in range(3)]
            found = await scrape_until(
                metrics, lambda s: value(s, "hubvisor_work_submitted_total", type="w") == 3
            )
            assert 3 == value(found, "hubvisor_work_queue_depth", type="w")
            assert 0 == value(found, "hubvisor_work_in_flight", type="w")
            assert 0 == value(found, "hubvisor_work_completed_total", type="w")
            assert 0 == value(found, "hubvisor_work_assigned_total", type="w")
            assert 0 == value(found, "hubvisor_work_wait_seconds_count", type="w")
            values = {v for _, labels in found for _, v in labels}
            assert not values & set(ids)
            assert [] == [name for name, _ in found if name.endswith("_created")]

    async def test_other_paths_and_methods_are_refused(self) -> None:
        """/ is 404 naming /metrics, POST is 405, a head that never ends is 400."""
        metrics = MetricsService("127.0.0.1:0")
        async with running([pool(size=0)], services=[metrics]):
            status, _, body = await trio.to_thread.run_sync(get, metrics.url[: -len("metrics")])
            assert 404 == status and "its metrics at /metrics and its health at /healthz" in body

            def post() -> int:
                req = urllib.request.Request(metrics.url, data=b"x", method="POST")
                return get_request(req)

            assert 405 == await trio.to_thread.run_sync(post)

            def half_request() -> bytes:
                with socket.create_connection(("127.0.0.1", metrics.port), timeout=TIMEOUT) as s:
                    s.sendall(b"GET /metrics HTTP/1.1\r\n")
                    s.shutdown(socket.SHUT_WR)
                    return s.recv(1000)

            assert (await trio.to_thread.run_sync(half_request)).startswith(b"HTTP/1.1 400 ")


def get_request(req: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


CLI_SPEC = """
from supervisor import ChildSpec, PoolSpec, SupervisorSpec

spec = SupervisorSpec(
    name="metricshub",
    children=[
        PoolSpec(
            agent_type="s",
            template=ChildSpec(id="s", argv=["sleep", "1000"], start_period=0.1, shutdown=1.0),
            size=3,
        )
    ],
)
"""


def _cli_has_metrics() -> bool:
    done = subprocess.run(
        [PY, "-m", "supervisor", "run", "--help"], capture_output=True, text=True, timeout=TIMEOUT
    )
    return "--metrics" in done.stdout


class TestCommandLine:
    def test_run_with_metrics_serves_them_until_it_stops(self, tmp_path: Path) -> None:
        """`hubvisor run SPEC --metrics 127.0.0.1:0` logs the URL it serves; a scrape
        there shows the three agents running; SIGTERM stops it with status 0."""
        if not _cli_has_metrics():
            pytest.skip("`hubvisor run` has no --metrics option yet (see docs/metrics.md)")
        (tmp_path / "tree.py").write_text(CLI_SPEC)
        log = tmp_path / "hub.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [PY, "-m", "supervisor", "run", str(tmp_path / "tree.py"),
                 "--metrics", "127.0.0.1:0", "--socket", str(tmp_path / "hub.sock")],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + TIMEOUT
            while not (found := re.search(r"metrics: (http://\S+/metrics)", log.read_text())):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            url = found.group(1)
            while True:
                _, _, text = get(url)
                samples = {
                    (s.name, frozenset(s.labels.items())): s.value
                    for f in text_string_to_metric_families(text)
                    for s in f.samples
                }
                running_now = value(samples, "hubvisor_agents", type="s", status="idle")
                if running_now == 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert 3 == running_now, text
        finally:
            proc.send_signal(signal.SIGTERM)
            assert 0 == proc.wait(timeout=TIMEOUT), log.read_text()


class FakeMirror:
    """A registry mirror that copies nothing and reports fixed counts."""

    flushes, failures, outages, events_dropped, connected = 7, 2, 1, 0, True

    def changed(self, agent_id: str) -> None:
        pass

    def record(self, kind: str, agent: Any, detail: str) -> None:
        pass

    async def run(self, registry: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def flush_final(self) -> None:
        pass


DOCS = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()


class TestDocs:
    async def test_the_page_names_every_metric_served_and_nothing_else(self) -> None:
        """docs/metrics.md has a row for each metric a scrape serves (a hub with
        max_agents and a mirror shows them all), and names no metric that is not served."""
        metrics = MetricsService("127.0.0.1:0")
        registry = Registry(mirror=FakeMirror())
        async with running([pool(size=0)], services=[metrics], max_agents=3, registry=registry):
            found = await scrape(metrics)
            _, _, text = await trio.to_thread.run_sync(get, metrics.url)
        assert 7 == value(found, "hubvisor_registry_mirror_flushes_total")
        assert 1 == value(found, "hubvisor_registry_mirror_up")
        served = {
            f.name + ("_total" if f.type == "counter" else "")
            for f in text_string_to_metric_families(text)
        }
        documented = set(re.findall(r"^\| `(hubvisor_[a-z_]+)`", DOCS, re.M))
        assert {s for s in served if s.startswith("hubvisor_")} == documented
        # The hub's own process and Python, from prometheus_client's collectors.
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= served
        assert "python_info" in served
        assert {s.split("_")[0] for s in served} == {"hubvisor", "process", "python"}


class TestConfig:
    @pytest.mark.parametrize(
        ("address", "words"),
        [
            ("9464", "is not HOST:PORT"),
            (":9464", "is not HOST:PORT"),
            ("localhost:http", "is not HOST:PORT"),
            ("127.0.0.1:70000", "over 65535"),
        ],
    )
    def test_a_bad_address_names_the_value_and_the_fix(self, address: str, words: str) -> None:
        """The error quotes the address, says what is wrong and gives an example."""
        with pytest.raises(ConfigError, match=words) as err:
            MetricsService(address)
        assert repr(address) in str(err.value)
        assert "'127.0.0.1:9464'" in str(err.value)

    def test_ipv6_hosts_are_bracketed(self) -> None:
        """``[::1]:0`` is host ``::1``, port 0, and the URL brackets it again."""
        assert ("::1", 0) == parse_address("[::1]:0")
        assert "http://[::1]:0/metrics" == MetricsService("[::1]:0").url

    async def test_a_port_in_use_fails_the_service_with_the_fix(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Another listener on the port: the service fails, is restarted (the port may
        be freed), and past its restart intensity is logged, named in
        hub.failed_services, and supervision goes on without it."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            metrics = MetricsService(f"127.0.0.1:{taken.getsockname()[1]}")
            quick = {"service_backoff": FixedBackoff(0.01), "service_intensity": Intensity(2, 10)}
            async with running([pool(size=0)], services=[metrics], **quick) as (hub, _):
                await until(lambda: ["metrics"] == hub.failed_services)
            assert "pick a free port" in caplog.text


class TestSampling:
    def test_groups_of_live_processes_only(self) -> None:
        """Our own group is found with at least this process in it; a group no process
        has is left out."""
        me = os.getpgrp()
        found = sample_groups([me, 2**22 + 12345])
        assert [me] == list(found)
        assert found[me].processes >= 1
        assert found[me].resident_bytes > 1 << 20
        assert found[me].cpu_seconds > 0


def test_a_summarised_refusal_counts_every_refusal_it_stands_for() -> None:
    """The work service reports one agent's refusals once per interval with a count
    (``repeats``): the counter adds them all, not one per report."""
    from supervisor import ChildStarting, WorkRefused

    service = MetricsService("127.0.0.1:0")
    where = {"at": 0.0, "supervisor": "hub/w-pool", "child_id": "w-agent-1"}
    service.observe(ChildStarting(**where, pid=1, incarnation=1, agent_type="w"))
    service.observe(WorkRefused(**where, item_id="w-1", attempt=2, reason="stale"))
    service.observe(WorkRefused(**where, item_id="w-1", attempt=2, reason="stale", repeats=349))
    assert 350 == service.refused.labels("w")._value.get()
