"""The metrics endpoint by the book (issue 22), over real HTTP: the hub's process and
Python metrics and its version, last heartbeats as timestamps, a bounded ``status``
label, OpenMetrics and gzip when asked, and ``/healthz``."""

from __future__ import annotations

import gzip
import importlib.metadata
import time
import urllib.error
import urllib.request

import attrs
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from strategies import FixedBackoff, Intensity
from supervisor import ChildSpec, Hub
from supervisor.metrics import STATUS_LABELS, MetricsService, status_label

from ..helpers import PY, TIMEOUT, is_, running, until, wait_event
from .test_metrics import labelled, pool, scrape, scrape_until, value


def fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` with ``headers``: status, headers (lower-case names), raw body."""
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


async def test_process_python_and_build_info_and_last_heartbeat_timestamps() -> None:
    """process_* and python_* of the hub itself, hubvisor_build_info{version}, and each
    agent's last heartbeat as a Unix timestamp (not an age)."""
    metrics = MetricsService("127.0.0.1:0")
    async with running([pool(size=2)], services=[metrics]):
        found = await scrape_until(
            metrics,
            lambda f: 2 == len(labelled(f, "hubvisor_agent_last_heartbeat_timestamp_seconds")),
        )
        now = time.time()

    version = importlib.metadata.version("hubvisor")
    assert 1 == value(found, "hubvisor_build_info", version=version)
    rss = value(found, "process_resident_memory_bytes")
    assert rss is not None and 10 << 20 < rss < 4 << 30
    assert (value(found, "process_open_fds") or 0) > 3
    assert any(name == "python_info" for name, _ in found)
    beats = labelled(found, "hubvisor_agent_last_heartbeat_timestamp_seconds")
    assert all(now - 10 < at <= now + 1 for at in beats.values()), (now, beats)
    assert not labelled(found, "hubvisor_agent_heartbeat_age_seconds")


async def test_openmetrics_and_gzip_when_asked() -> None:
    """Accept: application/openmetrics-text gets OpenMetrics (ending '# EOF');
    Accept-Encoding: gzip gets it gzipped; gzip;q=0 and no header get plain text."""
    metrics = MetricsService("127.0.0.1:0")
    openmetrics = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with running([pool(size=1)], services=[metrics]):
        await scrape(metrics)
        om = await trio.to_thread.run_sync(lambda: fetch(metrics.url, Accept=openmetrics))
        zipped = await trio.to_thread.run_sync(
            lambda: fetch(metrics.url, **{"Accept-Encoding": "br, gzip"})
        )
        refused = await trio.to_thread.run_sync(
            lambda: fetch(metrics.url, **{"Accept-Encoding": "gzip;q=0"})
        )

    status, headers, body = om
    assert 200 == status and headers["content-type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(text)}  # type: ignore[no-untyped-call]
    assert {"hubvisor_work_submitted", "hubvisor_agents", "process_cpu_seconds"} <= names

    status, headers, body = zipped
    assert (200, "gzip") == (status, headers["content-encoding"])
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    plain = gzip.decompress(body).decode()
    assert "hubvisor_build_info{" in plain
    assert len(body) < len(plain) / 3

    status, headers, body = refused
    assert 200 == status and "content-encoding" not in headers
    assert {f.name for f in text_string_to_metric_families(body.decode())} >= {"hubvisor_agents"}


@attrs.define
class Broken:
    """A service that fails at each start (not essential: the hub goes on without it)."""

    name: str = "broken"

    async def run(self, hub: Hub, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        raise RuntimeError("cannot work")


async def test_healthz_is_200_while_supervising_and_503_once_a_service_failed() -> None:
    healthy = MetricsService("127.0.0.1:0")
    async with running([pool(size=1)], services=[healthy]):
        url = healthy.url.removesuffix("/metrics") + "/healthz"
        status, headers, body = await trio.to_thread.run_sync(lambda: fetch(url))
        assert (200, b"ok: supervising\n") == (status, body)
        assert headers["content-type"].startswith("text/plain")

    sick = MetricsService("127.0.0.1:0")
    async with running(
        [pool(size=1)],
        services=[sick, Broken()],
        service_backoff=FixedBackoff(0.01),
        service_intensity=Intensity(1, 60),
    ) as (hub, events):
        await until(lambda: "broken" in hub.failed_services)
        url = sick.url.removesuffix("/metrics") + "/healthz"
        status, _, body = await trio.to_thread.run_sync(lambda: fetch(url))
        assert 503 == status
        assert b"failed services: broken" in body
        assert 200 == (await trio.to_thread.run_sync(lambda: fetch(sick.url)))[0]


async def test_agents_status_labels_are_bounded_with_other() -> None:
    """An agent saying STATUS=pondering is counted under status="other": the label takes
    only STATUS_LABELS, whatever agents say."""
    code = (
        "import os, socket, time\n"
        "s = socket.socket(fileno=int(os.environ['HUBVISOR_NOTIFY_FD']))\n"
        "s.send(b'READY')\n"
        "time.sleep(0.2)\n"
        "s.send(b'STATUS=pondering')\n"
        "time.sleep(1000)\n"
    )
    child = ChildSpec(id="p1", argv=[PY, "-c", code], agent_type="w", ready="notify", shutdown=2.0)
    metrics = MetricsService("127.0.0.1:0")
    async with running([child], services=[metrics]) as (hub, events):
        await wait_event(events, is_("status", "p1"))
        found = await scrape_until(
            metrics, lambda f: value(f, "hubvisor_agents", type="w", status="other") == 1
        )

    statuses = {dict(labels)["status"] for labels in labelled(found, "hubvisor_agents")}
    assert {"other"} == statuses
    assert "other" == status_label("pondering") and "idle" == status_label("idle")
    assert len(STATUS_LABELS) <= 12
