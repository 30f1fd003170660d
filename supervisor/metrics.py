"""Prometheus metrics of a hub: the public names (``MetricsService`` is also
``supervisor.MetricsService``). docs/metrics.md lists every metric."""

from __future__ import annotations

from ._metrics import (
    CONTENT_TYPE as CONTENT_TYPE,
    STATUS_LABELS as STATUS_LABELS,
    MetricsService as MetricsService,
    parse_address as parse_address,
    status_label as status_label,
)

__all__ = ["CONTENT_TYPE", "STATUS_LABELS", "MetricsService", "parse_address", "status_label"]
