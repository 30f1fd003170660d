"""The ``hubvisor`` command line: ``run``, ``demo`` and ``check``."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import trio

from ._demo import demo_spec
from ._errors import InvalidSpec, MaxAgentsExceeded, SupervisorEscalation
from ._hub import Hub
from ._log import log_events, log_kinds, logger
from ._spec import AnySpec, SupervisorSpec, check_specs

__all__ = ["load_spec", "main", "run_hub"]


def load_spec(target: str) -> SupervisorSpec | list[AnySpec]:
    """Load a spec from ``path/to/file.py[:attr]`` or ``package.module[:attr]``.

    Without ``:attr`` the names ``spec``, ``SPEC`` and ``tree`` are tried. The attribute
    may be a :class:`SupervisorSpec`, a list of specs, or a function returning either.
    """
    where, _, attr = target.partition(":")
    if where.endswith(".py") or os.sep in where:
        path = Path(where)
        if not path.is_file():
            raise click.BadParameter(f"no such file: {where!r}", param_hint="SPEC")
        mod_spec = importlib.util.spec_from_file_location(f"_hubvisor_spec_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:  # pragma: no cover - .py files load
            raise click.BadParameter(f"cannot load {where!r} as Python", param_hint="SPEC")
        module = importlib.util.module_from_spec(mod_spec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            mod_spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise click.BadParameter(
                f"cannot import {where!r}: {exc}; give a file path or an importable module",
                param_hint="SPEC",
            ) from exc
    names = [attr] if attr else ["spec", "SPEC", "tree"]
    for name in names:
        if hasattr(module, name):
            value: Any = getattr(module, name)
            if callable(value) and not isinstance(value, type):
                value = value()
            if isinstance(value, SupervisorSpec):
                return value
            if isinstance(value, list | tuple) and value:
                return list(value)
            raise click.BadParameter(
                f"{target}: {name} is {value!r}; it must be a SupervisorSpec, a list of "
                "specs, or a function returning one",
                param_hint="SPEC",
            )
    raise click.BadParameter(
        f"{where!r} has no attribute {' or '.join(names)}; name the spec with {where}:NAME",
        param_hint="SPEC",
    )


async def _watch_signals(hub: Hub, nursery: trio.Nursery, result: dict[str, int]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stopping = False
        async for signum in signals:
            if not stopping:
                stopping = True
                logger.info(
                    "%s received: stopping the tree (Ctrl-C again to kill at once)",
                    signal.Signals(signum).name,
                )
                nursery.start_soon(hub.stop)
            elif signum == signal.SIGINT:
                logger.warning("second SIGINT: killing every child's process group now")
                result["code"] = 130
                hub.kill_all()


async def _run(hub: Hub, duration: float | None, output: bool) -> int:
    result = {"code": 0}
    events = hub.bus.subscribe(log_kinds(output))  # before serving: miss no event
    async with trio.open_nursery() as outer:
        outer.start_soon(log_events, events)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, hub, nursery, result)
            if duration is not None:

                async def stop_later() -> None:
                    await trio.sleep(duration)
                    logger.info("--duration %gs reached: stopping the tree", duration)
                    await hub.stop()

                nursery.start_soon(stop_later)
            try:
                await hub.serve()
            except SupervisorEscalation as exc:
                logger.error("hubvisor: %s", exc)
                result["code"] = 1
            nursery.cancel_scope.cancel()
        hub.bus.close()
    return result["code"]


def run_hub(
    spec: SupervisorSpec | Sequence[AnySpec],
    *,
    max_agents: int | None = None,
    duration: float | None = None,
    output: bool = False,
) -> int:
    """Run a tree in the foreground until Ctrl-C/SIGTERM (or ``duration``); the exit code."""
    hub = Hub(spec, max_agents=max_agents)
    return trio.run(_run, hub, duration, output)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


_common = [
    click.option(
        "--max-agents",
        type=click.IntRange(min=0),
        default=None,
        help="Refuse to run more than this many agents at once.",
    ),
    click.option(
        "--duration",
        type=click.FloatRange(min=0),
        default=None,
        help="Stop the tree by itself after this many seconds.",
    ),
    click.option(
        "--output/--no-output", default=False, help="Also log every line the children write."
    ),
]


def _with_common(f: Any) -> Any:
    for option in reversed(_common):
        f = option(f)
    return f


@click.group()
@click.version_option(package_name="hubvisor")
def main() -> None:
    """hubvisor: an OTP-style supervision tree for the processes of AI coding agents."""


@main.command()
@click.argument("spec")
@_with_common
def run(spec: str, max_agents: int | None, duration: float | None, output: bool) -> None:
    """Run the supervision tree SPEC (path/to/file.py[:attr] or module[:attr])."""
    _setup_logging(False)
    try:
        tree = load_spec(spec)
        code = run_hub(tree, max_agents=max_agents, duration=duration, output=output)
    except (InvalidSpec, MaxAgentsExceeded) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


@main.command()
@click.option(
    "--crash-rate",
    type=click.FloatRange(0, 1),
    default=0.15,
    show_default=True,
    help="Chance that a worker crashes per unit of work.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Seconds per unit of work of the placeholder agents.",
)
@_with_common
def demo(
    crash_rate: float,
    interval: float,
    max_agents: int | None,
    duration: float | None,
    output: bool,
) -> None:
    """Run the example tree: a pool per agent type of placeholder agents that crash now and then."""
    _setup_logging(False)
    sys.exit(
        run_hub(
            demo_spec(crash_rate=crash_rate, interval=interval),
            max_agents=max_agents,
            duration=duration,
            output=output,
        )
    )


@main.command()
@click.argument("spec")
def check(spec: str) -> None:
    """Load SPEC and check it without starting anything."""
    try:
        tree = load_spec(spec)
        check_specs(tree)
        Hub(tree)
    except InvalidSpec as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{spec}: OK")
