"""What the docs show users to import is public (issue 22): no Python example in README.md
or docs/*.md imports a private ``supervisor._module``."""

from __future__ import annotations

import re
from pathlib import Path

import supervisor
import supervisor.metrics

ROOT = Path(__file__).resolve().parents[1]
_PRIVATE = re.compile(r"^\s*(from supervisor(\.\w+)*\._\w+ import|import supervisor(\.\w+)*\._)")


def test_no_example_imports_a_private_module() -> None:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
        for block in blocks:
            found += [f"{page.name}: {line}" for line in block.splitlines() if _PRIVATE.match(line)]
    assert [] == found


def test_the_metrics_names_the_docs_use_are_public() -> None:
    assert supervisor.MetricsService is supervisor.metrics.MetricsService
    assert "other" in supervisor.metrics.STATUS_LABELS
    assert set(supervisor.metrics.__all__) <= set(dir(supervisor.metrics))
