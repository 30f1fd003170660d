"""docs/property-testing.md: its example file runs as written and is the one it shows."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "property-testing.md"
EXAMPLE = ROOT / "docs" / "examples" / "test_my_tree.py"


def test_page_shows_the_example_file_verbatim() -> None:
    """The complete example on the page is byte for byte the file the next test runs."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)

    assert EXAMPLE.read_text() in blocks


def test_example_runs_as_written() -> None:
    """Every test in the example file passes."""
    spec = importlib.util.spec_from_file_location("docs_example_test_my_tree", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [getattr(module, n) for n in dir(module) if n.startswith("test_")]

    for test in tests:
        test()

    assert 3 == len(tests)
