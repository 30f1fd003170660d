"""The HTTP side of the metrics service: one request per connection.

``GET /metrics`` answers in the format the scraper asks for in ``Accept`` (the Prometheus
text format 0.0.4, or OpenMetrics, chosen by ``prometheus_client``'s ``choose_encoder``),
gzipped when ``Accept-Encoding`` allows it; ``GET /healthz`` answers 200 while the hub
supervises with every service, 503 once a service has failed for good. Encoding and
compression run in a worker thread, on metrics already collected.
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import trio
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["MAX_HEAD", "BadRequest", "gzip_accepted", "health", "read_head", "serve"]

MAX_HEAD: Final = 8192
"""The most bytes a request head (request line and headers) may take."""

Collect = Callable[[], Awaitable[Any]]
"""``await collect()``: every metric collected, for an encoder (``registry.collect()``)."""


class BadRequest(Exception):
    """The request head is too long or the connection ended before it did."""


async def read_head(stream: trio.abc.ReceiveStream) -> bytes:
    """The request's head (request line and headers), up to the blank line."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MAX_HEAD:
            raise BadRequest(f"request head over {MAX_HEAD} bytes")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise BadRequest("the connection ended before the request did")
        data += chunk
    return data


def _headers(head: bytes) -> dict[str, str]:
    """The head's headers, names in lower case (the last of a repeated one)."""
    found: dict[str, str] = {}
    for line in head.decode("latin-1").splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip().lower()] = value.strip()
    return found


def gzip_accepted(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (``gzip;q=0`` does not)."""
    for part in accept_encoding.split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        if coding.lower() not in ("gzip", "*"):
            continue
        q = next((p[2:] for p in params if p.startswith("q=")), "1")
        try:
            return float(q) > 0
        except ValueError:
            return False
    return False


def health(hub: Hub | None) -> tuple[bool, str]:
    """``(healthy, why)``: healthy while the hub supervises and no service has failed
    for good (``hub.failed_services``, or an essential one stopping the hub)."""
    if hub is None:
        return False, "the metrics service is not serving a hub yet\n"
    failed = list(hub.failed_services)
    fatal = getattr(hub, "_service_failure", None)
    if fatal is not None:
        return False, f"the hub is stopping: {fatal}\n"
    if failed:
        return False, f"failed services: {', '.join(failed)} (see the hub's log)\n"
    return True, "ok: supervising\n"


async def _answer(
    hub: Hub | None, collect: Collect, head: bytes
) -> tuple[str, str, bytes, Mapping[str, str]]:
    """``(status, content type, body, other headers)`` for one request."""
    method, _, rest = head.partition(b" ")
    target = rest.partition(b" ")[0].partition(b"?")[0]
    if method not in (b"GET", b"HEAD"):
        return "405 Method Not Allowed", "text/plain", b"use GET\n", {}
    if target == b"/healthz":
        ok, why = health(hub)
        return ("200 OK" if ok else "503 Service Unavailable"), "text/plain", why.encode(), {}
    if target != b"/metrics":
        body = b"hubvisor serves its metrics at /metrics and its health at /healthz\n"
        return "404 Not Found", "text/plain", body, {}
    headers = _headers(head)
    encoder, kind = choose_encoder(headers.get("accept", ""))
    families = await collect()
    body = await trio.to_thread.run_sync(encoder, families)
    if not gzip_accepted(headers.get("accept-encoding", "")):
        return "200 OK", kind, body, {}
    body = await trio.to_thread.run_sync(gzip.compress, body)
    return "200 OK", kind, body, {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}


async def serve(stream: trio.abc.Stream, hub: Hub | None, collect: Collect, timeout: float) -> None:
    """Read one request from ``stream`` and answer it within ``timeout`` seconds."""
    # The scraper may go away or stall at any point: nothing to tell it then.
    with contextlib.suppress(
        trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError
    ):
        with trio.fail_after(timeout):
            method = b"GET"
            extra: Mapping[str, str] = {}
            try:
                head = await read_head(stream)
            except BadRequest as exc:
                status, kind, body = "400 Bad Request", "text/plain", f"{exc}\n".encode()
            else:
                method = head.partition(b" ")[0]
                status, kind, body, extra = await _answer(hub, collect, head)
            more = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n{more}"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            await stream.send_all(header if method == b"HEAD" else header + body)
