"""What the invariant checks share: the violation they raise and its message.

The checks themselves are in :mod:`._invariants_tree` (the supervision tree: restarts,
intensity, backoff, limits, shutdown, registry, hangs) and :mod:`._invariants_work` (work
items under crashes and hangs). Each derives what *should* have happened from the spec
and from what the trace shows, and raises :class:`InvariantViolation` naming the first
record that disagrees.
"""

from __future__ import annotations

from .._spec import AnySpec, ChildSpec, PoolSpec
from ._run import Trace

__all__ = ["InvariantViolation"]

EPS = 1e-9
"""Slack for comparing times read back from a trace."""


class InvariantViolation(AssertionError):
    """A trace broke an invariant; the message names the check, the record and why."""


def fail(trace: Trace, index: int | None, check: str, message: str) -> InvariantViolation:
    lines = trace.format().splitlines()
    if index is not None:
        # Show the trace up to the offending record (records and lines correspond 1:1).
        end = index + 1
        lines = lines[max(0, end - 40) : end]
        where = f"\n\ntrace up to the offending record (#{index}):\n" + "\n".join(lines)
    else:
        where = "\n\ntrace:\n" + "\n".join(lines[-40:])
    schedule = "\n".join(f"  {c!r}" for c in trace.schedule.crashes)
    tree = "\n".join(outline(trace.spec, 1))
    work = "".join(f"\n  {w!r}" for w in trace.schedule.work)
    if work:
        work = "\nwork:" + work
    return InvariantViolation(
        f"[{check}] {message}\n\ntree:\n{tree}\n\nschedule:\n{schedule or '  (no crashes)'}"
        f"\nstubborn: {sorted(trace.schedule.stubborn)}{work}{where}"
    )


def outline(spec: AnySpec, depth: int) -> list[str]:
    """A compact, indented view of a spec tree for failure messages."""
    pad = "  " * depth
    if isinstance(spec, ChildSpec):
        extra = f" heartbeat_timeout={spec.heartbeat_timeout:g}" if spec.heartbeat_timeout else ""
        return [f"{pad}{spec.id} {spec.restart.value} shutdown={spec.shutdown}{extra}"]
    policies = f"{spec.strategy!r} {spec.intensity!r} {spec.backoff!r}"
    if isinstance(spec, PoolSpec):
        return [
            f"{pad}{spec.name} (pool of {spec.size} {spec.template.restart.value}) "
            f"{spec.restart.value} {policies}"
        ]
    lines = [f"{pad}{spec.name} {spec.restart.value} {policies}"]
    for child in spec.children:
        lines.extend(outline(child, depth + 1))
    return lines
