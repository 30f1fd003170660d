"""``mypy --strict`` checks what an agent sends: ``JSON`` is a recursive type, not Any."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

GOOD = """
from agents.base import JSON, Assignment, BaseAgent


class Counter(BaseAgent):
    def validate_assignment(self, payload: JSON) -> None:
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
            raise ValueError("payload must be {'text': str}")

    async def do_work(self, assignment: Assignment) -> JSON:
        words: list[JSON] = [w for w in assignment.payload["text"].split()]
        await assignment.progress(0.5, checkpoint={"seen": len(words)})
        await assignment.submit("review", {"words": words, "ratio": 0.5, "ok": None})
        return {"words": words, "count": len(words), "done": True}
"""

BAD = """
from agents.base import JSON, Assignment, BaseAgent


class Bad(BaseAgent):
    async def do_work(self, assignment: Assignment) -> JSON:
        await assignment.progress(object())
        await assignment.submit("x", (1, 2))
        return {1, 2}
"""


@pytest.mark.slow
def test_mypy_strict_refuses_what_is_not_json(tmp_path: Path) -> None:
    """A set result, a tuple payload and an object progress fail; dicts of lists pass."""
    (tmp_path / "good_agent.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)

    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "good_agent.py", "bad.py"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert [] == [e for e in errors if e.startswith("good_agent.py")], result.stdout
    assert ["bad.py:7", "bad.py:8", "bad.py:9"] == [e.split(": ")[0] for e in errors], result.stdout
    assert 'got "set[int]"' in result.stdout
