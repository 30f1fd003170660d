"""The demo's work, shared by the four agent types, and its injected faults.

The pipeline (``hubvisor demo``): a *planning* item ``{"task", "seed", "pieces",
"lines"}`` becomes ``pieces`` *worker* items; each worker generates ``lines`` lines of
text from ``(seed, piece)`` with :func:`generate_text`, hashes and counts it and submits
a *qc* item; qc recomputes and submits a *review* item; review accepts the piece.

Faults and pace, from the environment (all optional):

* ``HUBVISOR_DEMO_WORK_SECONDS``: simulated work per item (default 0.3), in
  :data:`STEPS` steps, each reported with ``PROGRESS`` and a checkpoint
  ``{"step": n}``; a later attempt of the item resumes after the last step reported.
* ``HUBVISOR_DEMO_CRASH_RATE``: probability per item that the agent exits with status 1
  half-way through the work (``os._exit(1)``, no goodbye: a crash).
* ``HUBVISOR_DEMO_HANG_RATE``: probability per item that the agent blocks half-way
  through for good: no heartbeat, no answer to ``PING``, SIGTERM ignored (a hang the hub
  must detect and kill).
* ``HUBVISOR_DEMO_SEED``: seeds the faults with the agent id, item id and attempt, so a
  run is reproducible (default 0).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .base import Assignment

__all__ = [
    "STEPS",
    "WORDS",
    "Faults",
    "digest",
    "generate_text",
    "require",
    "simulate_work",
]

STEPS = 4
"""Steps of simulated work per item, each reported with PROGRESS and a checkpoint."""

_VOCABULARY = (
    "agent alpha beta bravo charlie delta echo foxtrot golf hotel india juliet kilo lima "
    "mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray "
    "yankee zulu supervisor worker queue item attempt result heartbeat reclaim "
    "checkpoint trio erlang process signal channel record restart hub plan review "
    "quality fence lease payload submit assign ready stop ping handback progress"
)
WORDS = tuple(_VOCABULARY.split())
"""The vocabulary :func:`generate_text` draws from."""

MAX_PIECES = 1000
MAX_LINES = 100_000


def generate_text(seed: int, piece: int, lines: int) -> str:
    """``lines`` lines of 4-12 words, the same for the same ``(seed, piece, lines)``."""
    rng = random.Random(f"{seed}:{piece}")
    out = []
    for _ in range(lines):
        out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))))
    return "\n".join(out) + "\n"


def digest(text: str) -> dict[str, Any]:
    """``{"sha256": hex digest of the UTF-8 text, "words": whitespace-separated words}``."""
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "words": len(text.split())}


def require(payload: Any, **fields: type) -> dict[str, Any]:
    """Check that ``payload`` is an object with these fields of these types (``int``
    excludes ``bool``) and return it.

    Raises:
        ValueError: with the first field that is missing or wrong.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"payload must be a JSON object, got {payload!r:.80}")
    for name, kind in fields.items():
        value = payload.get(name)
        if (
            name not in payload
            or not isinstance(value, kind)
            or (kind is int and isinstance(value, bool))
        ):
            raise ValueError(f"payload field {name!r} must be {kind.__name__}, got {value!r:.80}")
    if "task" in fields and not 1 <= len(payload["task"]) <= 128:
        raise ValueError("payload field 'task' must be 1-128 characters")
    if "pieces" in fields and not 1 <= payload["pieces"] <= MAX_PIECES:
        raise ValueError(f"payload field 'pieces' must be 1-{MAX_PIECES}")
    if "lines" in fields and not 1 <= payload["lines"] <= MAX_LINES:
        raise ValueError(f"payload field 'lines' must be 1-{MAX_LINES}")
    if "piece" in fields and not 0 <= payload["piece"] < MAX_PIECES:
        raise ValueError(f"payload field 'piece' must be 0-{MAX_PIECES - 1}")
    return payload


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(env.get(name, default))
    except ValueError:
        return default
    return value if value >= 0 else default


class Faults:
    """The demo's pace and injected faults, read from the environment once."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.work_seconds = _number(env, "HUBVISOR_DEMO_WORK_SECONDS", 0.3)
        self.crash_rate = _number(env, "HUBVISOR_DEMO_CRASH_RATE", 0.0)
        self.hang_rate = _number(env, "HUBVISOR_DEMO_HANG_RATE", 0.0)
        self.seed = env.get("HUBVISOR_DEMO_SEED", "0")
        self.agent_id = env.get("HUBVISOR_AGENT_ID", "agent")

    def draw(self, item: str, attempt: int) -> tuple[bool, bool]:
        """Whether this attempt crashes, and whether it hangs (reproducible)."""
        rng = random.Random(f"{self.seed}:{self.agent_id}:{item}:{attempt}")
        crash = rng.random() < self.crash_rate
        hang = rng.random() < self.hang_rate
        return crash, hang


_faults: Faults | None = None


async def simulate_work(assignment: Assignment) -> None:
    """Spend ``HUBVISOR_DEMO_WORK_SECONDS`` in :data:`STEPS` steps, reporting progress
    with a checkpoint after each and resuming after the checkpoint an earlier attempt
    left; crash or hang half-way when the fault draw says so."""
    global _faults
    if _faults is None:
        _faults = Faults()
    faults = _faults
    crash, hang = faults.draw(assignment.item, assignment.attempt)
    done = 0
    if isinstance(assignment.checkpoint, dict):
        step = assignment.checkpoint.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            done = max(0, min(STEPS, step))
    fault_at = max(done, STEPS // 2)
    for step in range(done, STEPS + 1):
        if step == fault_at and (crash or hang):
            _fault(faults, assignment, "crash" if crash else "hang")
        if step == STEPS or faults.work_seconds <= 0:
            break
        await trio.sleep(faults.work_seconds / STEPS)
        await assignment.progress(round((step + 1) / STEPS, 3), checkpoint={"step": step + 1})


def _fault(faults: Faults, assignment: Assignment, kind: str) -> None:
    where = f"item {assignment.item} attempt {assignment.attempt}"
    if kind == "crash":
        print(f"{faults.agent_id}: demo fault: crashing on {where}", file=sys.stderr, flush=True)
        os._exit(1)
    print(f"{faults.agent_id}: demo fault: hanging on {where}", file=sys.stderr, flush=True)
    while True:  # blocks the event loop: no heartbeat, no PING answer, no SIGTERM handling
        time.sleep(3600)
