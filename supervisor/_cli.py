"""The ``hubvisor`` command line: ``run``, ``demo``, ``check``, the commands that control a
running hub (``status``, ``submit``, ``work``, ``scale``, ``restart``, ``stop``, ``logs``,
``events``) and ``ctl`` (every control op by its name).

The control commands are built from the table of control ops (:data:`OPS
<supervisor._control.OPS>`): an op's ``cli`` names its top-level command, and every op is
also ``hubvisor ctl NAME``.
"""

from __future__ import annotations

import contextlib
import functools
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

from ._control import (
    FAST_TIMEOUT,
    OPS,
    ControlClientError,
    ControlLimits,
    Field,
    NoHubRunning,
    Op,
    default_socket_path,
    dumps,
    loads_request,
    request,
    serve_control,
    stream,
)
from ._demo import DemoFeeder, demo_spec
from ._errors import (
    ConfigError,
    ControlError,
    InvalidSpec,
    MaxAgentsExceeded,
    ServiceFailed,
    SupervisorEscalation,
)
from ._hub import Hub, Service
from ._keeper import OrphanKeeper
from ._limits import LimitsService
from ._log import log_events, log_kinds, logger
from ._registry import Registry
from ._registry_redis import RedisMirror
from ._spec import AnySpec, SupervisorSpec, check_specs
from ._top import top
from .work import WorkService

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


async def _run(
    hub: Hub,
    duration: float | None = None,
    output: bool = False,
    control_socket: Path | None = None,
    control_limits: ControlLimits | None = None,
) -> int:
    result = {"code": 0}
    events = hub.bus.subscribe(log_kinds(output))  # before serving: miss no event
    async with trio.open_nursery() as outer:
        outer.start_soon(log_events, events)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, hub, nursery, result)
            if control_socket is not None:
                serve = functools.partial(serve_control, limits=control_limits or ControlLimits())
                path = await nursery.start(serve, hub, control_socket)
                logger.info("control socket: %s (hubvisor ctl --socket %s list)", path, path)
            if duration is not None:

                async def stop_later() -> None:
                    await trio.sleep(duration)
                    logger.info("--duration %gs reached: stopping the tree", duration)
                    await hub.stop()

                nursery.start_soon(stop_later)
            try:
                await hub.serve()
            except (SupervisorEscalation, ServiceFailed) as exc:
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
    control_socket: str | None = "auto",
    redis: str | None = None,
    redis_prefix: str = "hubvisor",
    services: Sequence[Service] = (),
    hub_id: str | None = None,
    lease: float = 10.0,
    metrics: str | None = None,
    control_max_connections: int = ControlLimits().max_connections,
    control_idle_timeout: float = ControlLimits().idle_timeout,
    metrics_max_connections: int = 16,
) -> int:
    """Run a tree in the foreground until Ctrl-C/SIGTERM (or ``duration``); the exit code.

    ``control_socket``: ``"auto"`` serves :mod:`hubvisor ctl <supervisor._control>` requests
    on the default path for the hub's id, a path serves them there, ``None`` disables it.
    ``redis``: keep the work in durable queues on this Redis (shared by every hub that uses
    it, each holding its items on a ``lease`` of seconds) and mirror the agent registry
    there, under ``redis_prefix`` (default: both live in the hub's memory only).
    ``hub_id``: the hub's id (default: the root spec's name); hubs sharing a Redis need
    different ones. ``metrics``: serve Prometheus metrics on this ``HOST:PORT``
    (:class:`~supervisor._metrics.MetricsService`). ``control_max_connections``,
    ``control_idle_timeout``: see :class:`~supervisor._control.ControlLimits`;
    ``metrics_max_connections``: scrapes served at once.
    """
    limits = ControlLimits(
        max_connections=control_max_connections, idle_timeout=control_idle_timeout
    )
    registry = None
    work = None
    if metrics is not None:
        from ._metrics import MetricsService  # prometheus_client is imported only when used

        services = (*services, MetricsService(metrics, max_connections=metrics_max_connections))
    if redis is not None:
        from .work.redis import RedisWorkQueue  # redis-py is imported only when used

        mirror = RedisMirror(redis, prefix=redis_prefix)
        logger.info("registry: mirrored to Redis at %s, prefix %r", mirror.url, redis_prefix)
        registry = Registry(mirror=mirror)
        work = WorkService(RedisWorkQueue(redis, prefix=redis_prefix, lease=lease))
    hub = Hub(
        spec,
        max_agents=max_agents,
        registry=registry,
        # No orphan ever: whatever the agents start dies when the hub does, however.
        services=[OrphanKeeper(), LimitsService(), *services],
        work=work,
        hub_id=hub_id,
    )
    if work is not None:
        store = work.queue
        assert isinstance(store, RedisWorkQueue)
        store.check_hub_id(hub.context.hub_id)
    socket_path = (
        None
        if control_socket is None
        else default_socket_path(hub.context.hub_id)
        if control_socket == "auto"
        else Path(control_socket)
    )
    if socket_path is not None:
        # Agents that run `hubvisor submit ...` themselves reach their own hub.
        hub.context.env = {SOCKET_ENV: str(socket_path), **hub.context.env}
    if redis is not None:
        # Agents that keep their own state in Redis find the hub's (agents.BaseAgent reads
        # it as redis_url).
        hub.context.env = {"REDIS_URL": redis, **hub.context.env}
    # Not `except* ControlError: raise ...`: on Python 3.11.0-3.11.3 an exception raised
    # inside an except* block comes out wrapped in the group it replaced (CPython
    # gh-103590), and the CLI printed a 43-line ExceptionGroup instead of one line.
    # No exception is raised inside an except* block anywhere (tests/test_faults_control.py).
    try:
        return trio.run(_run, hub, duration, output, socket_path, limits)
    except BaseExceptionGroup as group:
        found, rest = group.split(ControlError)
        if found is None or rest is not None:
            raise  # something else went wrong too: show all of it
        error = _first_leaf(found)
    raise error from None


def _first_leaf(group: BaseExceptionGroup[ControlError]) -> ControlError:
    """The first exception in ``group``, however deeply the nurseries nested it."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


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
    click.option(
        "--control-socket",
        "--socket",
        "control_socket",
        default="auto",
        envvar="HUBVISOR_SOCKET",
        show_default=True,
        help="Unix socket for `hubvisor status` and the other control commands ('auto': "
        "$XDG_RUNTIME_DIR/hubvisor/<hub id>.sock or /tmp/hubvisor-<uid>/<hub id>.sock, the "
        "hub id being the root spec's name; 'none': no control socket; also "
        "$HUBVISOR_SOCKET).",
    ),
    click.option(
        "--redis",
        metavar="URL",
        envvar="HUBVISOR_REDIS_URL",
        default=None,
        callback=lambda ctx, param, value: _check_redis_url(value),
        help="Keep the work in durable queues on Redis, shared with every hub that uses it, "
        "and mirror the agent registry there (redis://[:password@]host[:port][/db] or "
        "rediss:// for TLS; also $HUBVISOR_REDIS_URL, which keeps the password out of ps).",
    ),
    click.option(
        "--redis-prefix",
        default="hubvisor",
        show_default=True,
        help="The first element of every Redis key the hub writes.",
    ),
    click.option(
        "--lease",
        type=click.FloatRange(min=0.1),
        default=10.0,
        show_default=True,
        help="With --redis: seconds a dead hub's work stays leased to it before another "
        "hub sharing the Redis takes it (a live hub renews its leases every third of that).",
    ),
    click.option(
        "--metrics",
        metavar="HOST:PORT",
        envvar="HUBVISOR_METRICS",
        default=None,
        callback=lambda ctx, param, value: _check_metrics(value),
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464; "
        "port 0: any free port, logged; off by default). Also $HUBVISOR_METRICS.",
    ),
    click.option(
        "--control-max-connections",
        type=click.IntRange(min=1),
        default=ControlLimits().max_connections,
        show_default=True,
        help="Control connections served at once; one more is told the hub is busy and "
        "closed (clients retry), so a flood of connections cannot fill the hub's fd table.",
    ),
    click.option(
        "--control-idle-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=ControlLimits().idle_timeout,
        show_default=True,
        help="Seconds a control connection may wait between requests before the hub "
        "closes it (a following logs/events -f is never idle).",
    ),
    click.option(
        "--metrics-max-connections",
        type=click.IntRange(min=1),
        default=16,
        show_default=True,
        help="With --metrics: scrapes served at once; one more is answered 503 and closed.",
    ),
    click.option(
        "--hub-id",
        envvar="HUBVISOR_HUB_ID",
        default=None,
        help="The hub's id (default: the root spec's name); hubs sharing a Redis need "
        "different ones. Also $HUBVISOR_HUB_ID.",
    ),
]


def _check_redis_url(value: str | None) -> str | None:
    if value is not None:
        try:
            RedisMirror(value)
        except ValueError as exc:  # the message never shows the password
            raise click.BadParameter(str(exc), param_hint="--redis") from None
    return value


def _check_metrics(value: str | None) -> str | None:
    if value is not None:
        from ._metrics import parse_address

        try:
            parse_address(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--metrics") from None
    return value


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
def run(spec: str, **options: Any) -> None:
    """Run the supervision tree SPEC (path/to/file.py[:attr] or module[:attr])."""
    _setup_logging(False)
    _run_or_explain(lambda: load_spec(spec), options)


def _run_or_explain(tree: Any, options: dict[str, Any], services: Sequence[Service] = ()) -> None:
    if options.get("control_socket") == "none":
        options["control_socket"] = None
    try:
        code = run_hub(tree(), services=services, **options)
    except (InvalidSpec, MaxAgentsExceeded, ControlError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


@main.command()
@click.option(
    "--crash-rate",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="Chance per item that the crashy worker crashes.",
)
@click.option(
    "--hang-rate",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Chance per item that the hangy worker hangs.",
)
@click.option(
    "--every",
    type=click.FloatRange(min=0.05),
    default=4.0,
    show_default=True,
    help="Seconds between two tasks the demo submits.",
)
@_with_common
def demo(crash_rate: float, hang_rate: float, every: float, **options: Any) -> None:
    """Run the demo: planning, worker, qc and review agents with work flowing through
    them; one worker crashes now and then, one hangs. Watch it with `hubvisor status`."""
    _setup_logging(False)
    _run_or_explain(
        lambda: demo_spec(crash_rate=crash_rate, hang_rate=hang_rate),
        options,
        services=[DemoFeeder(every=every)],
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


SOCKET_ENV = "HUBVISOR_SOCKET"
"""The control socket every command uses when given no ``--socket``; ``run`` and ``demo``
put it in their agents' environment."""


def _default_socket() -> Path:
    env = os.environ.get(SOCKET_ENV)
    return Path(env) if env else default_socket_path("hub")


@main.group()
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=SOCKET_ENV,
    default=None,
    help="The hub's control socket (default: $HUBVISOR_SOCKET, else the default path for "
    "--hub-id).",
)
@click.option("--hub-id", default="hub", show_default=True, help="The id of the hub to control.")
@click.pass_context
def ctl(ctx: click.Context, socket_path: Path | None, hub_id: str) -> None:
    """Control a running hub."""
    ctx.obj = socket_path or default_socket_path(hub_id)


@main.group()
def work() -> None:
    """Work items: list them, show one, retry a dead one."""


class _NoHub(click.ClickException):
    """No hub listens at the socket: the message alone, exit status 3."""

    exit_code = 3

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


class _JsonValue(click.ParamType[Any]):
    """A JSON value from the command line, or from stdin for ``-``."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        text = sys.stdin.read() if value == "-" else value
        where = "stdin" if value == "-" else repr(value if len(value) <= 40 else value[:37] + "...")
        example = (
            """give e.g. '{"n": 3}' (single quotes keep the shell off it), or - to read stdin"""
        )
        if not text.strip():
            self.fail(f"{where} is empty; {example}", param, ctx)
        try:
            parsed = loads_request(text)  # NaN and Infinity refused, lone surrogates replaced
        except ValueError as exc:
            self.fail(f"{where} is not JSON ({exc}); {example}", param, ctx)
        if parsed is None:
            self.fail(f"{where} is null; {example}", param, ctx)
        return parsed


def _param(f: Field) -> click.Parameter:
    """The command-line argument or option of one field of an op."""
    kind: Any = f.kind
    if f.minimum is not None:
        kind = click.IntRange(min=f.minimum)
    elif f.choices is not None:
        kind = click.Choice(f.choices)
    elif f.kind in (object, dict):
        kind = _JsonValue()
    if f.flag is None:
        return click.Argument([f.name], type=kind, metavar=f.metavar)
    names = [f.flag, f.name] if f.flag.startswith("--") else [f.flag, f"--{f.name}", f.name]
    text = f"{f.help[0].upper()}{f.help[1:]}."
    if f.kind is bool:
        return click.Option(names, is_flag=True, default=False, help=text)
    if f.kind is list:
        return click.Option(names, multiple=True, metavar="KIND", help=text)
    return click.Option(names, type=kind, default=None, required=f.required, help=text)


def _print_stream(op: Op, path: Path, req: dict[str, Any], as_json: bool, timeout: Any) -> None:
    args = {k: v for k, v in req.items() if k != "op"}
    try:
        for answer in stream(path, req, timeout):
            if "dropped" in answer:
                click.echo(
                    f"hubvisor: the hub dropped {answer['dropped']} {op.name} items here: "
                    "this client read too slowly",
                    err=True,
                )
                continue
            if as_json:
                click.echo(dumps(answer["item"]))
            else:
                op.show(answer["item"], args)
            sys.stdout.flush()  # a reader at the other end of a pipe sees each line now
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # e.g. `| head`: the reader is gone, and so is the need to print
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


def _ctl_command(op: Op, name: str | None = None) -> click.Command:
    """The command of one entry of the control table (``hubvisor ctl NAME``, or ``name``)."""
    params: list[click.Parameter] = []
    arguments = []
    for f in op.fields:
        params.append(_param(f))
        if f.flag is None:
            arguments.append(f"{f.metavar or f.name.upper()}: {f.help}.")
    params.append(
        click.Option(
            ["--json", "as_json"],
            is_flag=True,
            help="Print each item as a JSON line." if op.stream else "Print the result as JSON.",
        )
    )
    params.append(
        click.Option(
            ["--timeout"],
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help=(
                f"Seconds to wait for each line (default: {FAST_TIMEOUT:g}; for ever with -f)"
                if op.stream
                else f"Seconds to wait for the answer (default: {FAST_TIMEOUT:g}"
                + (", plus the longest the hub may need for it)" if op.budget else ")")
            ),
        )
    )
    params.append(
        click.Option(
            ["--socket", "socket_path"],
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="The hub's control socket (default: $HUBVISOR_SOCKET, else the default path "
            "for --hub-id).",
        )
    )
    params.append(
        click.Option(
            ["--hub-id"],
            default=None,
            help="The id of the hub to control (its root spec's name; default: hub).",
        )
    )

    def callback(
        as_json: bool,
        timeout: float | None,
        socket_path: Path | None,
        hub_id: str | None,
        **values: Any,
    ) -> None:
        obj = click.get_current_context().obj
        path = (
            socket_path
            or (default_socket_path(hub_id) if hub_id else None)
            or (obj if isinstance(obj, Path) else None)
            or _default_socket()
        )
        args = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in values.items()
            if v is not None and v is not False and v != ()
        }
        req = {"op": op.name, **args}
        try:
            if op.stream is not None:
                _print_stream(op, path, req, as_json, timeout)
                return
            result = request(path, req, timeout)
        except NoHubRunning as exc:
            raise _NoHub(str(exc)) from exc
        except ControlClientError as exc:
            raise click.ClickException(str(exc)) from exc
        if as_json:
            click.echo(dumps(result, indent=2))
        else:
            op.show(result, args)

    help_text = op.help + ("\n\n" + "\n\n".join(arguments) if arguments else "")
    return click.Command(name or op.name, callback=callback, params=params, help=help_text)


for _op in OPS.values():
    if _op.command:
        ctl.add_command(_ctl_command(_op))
    if _op.cli is not None:
        *_groups, _name = _op.cli.split()
        _parent: click.Group = main
        for _group in _groups:
            _sub = _parent.commands[_group]
            assert isinstance(_sub, click.Group), _group
            _parent = _sub
        _parent.add_command(_ctl_command(_op, _name))
ctl.help = f"Control a running hub: {', '.join(ctl.commands)} (each op of the control table)."
main.add_command(top)
