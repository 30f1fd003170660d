"""The ``hubvisor`` command line: ``run``, ``demo``, ``check``, the commands that control a
running hub (``status``, ``submit``, ``work``, ``scale``, ``restart``, ``stop``, ``logs``,
``events``) and ``ctl`` (every control op by its name).

The control commands are built from the table of control ops (:data:`OPS
<supervisor.control.ops.OPS>`): an op's ``cli`` names its top-level command, and every op is
also ``hubvisor ctl NAME``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._errors import ConfigError, ControlError, InvalidSpec, MaxAgentsExceeded
from ._redis_cluster import cluster_option, fold_cluster_option
from .control.client import (
    ControlClientError,
    NoHubRunning,
    request,
    request_many,
    stop_and_wait,
    stream,
)
from .control.ops import (
    FAST_TIMEOUT,
    OPS,
    WAIT_TIMED_OUT,
    ControlLimits,
    Field,
    Op,
    wait_exit_status,
)
from .control.paths import NoHubExit, default_socket_path, env_socket_path, no_hub_report
from .control.wire import dumps, loads_request

if TYPE_CHECKING:
    from ._hub import Service
    from ._spec import AnySpec, SupervisorSpec

# Only what every command needs is imported above: a client command (`hubvisor status`)
# must not pay for trio, the runtime, the hub or the work queues. `run`, `demo`, `check`
# and `top` import their parts when they run.

__all__ = ["load_spec", "main"]


def load_spec(target: str) -> SupervisorSpec | list[AnySpec]:
    """Load a spec from ``path/to/file.py[:attr]`` or ``package.module[:attr]``.

    Without ``:attr`` the names ``spec``, ``SPEC`` and ``tree`` are tried. The attribute
    may be a :class:`SupervisorSpec`, a list of specs, or a function returning either.
    """
    from ._spec import SupervisorSpec

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


def _setup_logging(options: dict[str, Any]) -> None:
    """Log as ``--log-level`` and ``--log-format`` say (taken out of ``options``)."""
    from ._log import setup_logging

    setup_logging(options.pop("log_level"), options.pop("log_format"))


_LIMITS = ControlLimits()

_common = [
    click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
        envvar="HUBVISOR_LOG_LEVEL",
        help="The least severe log lines written (debug: also one line per completed "
        "item). Also $HUBVISOR_LOG_LEVEL.",
    ),
    click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        envvar="HUBVISOR_LOG_FORMAT",
        help="text: ISO 8601 time, level, message; json: one JSON object a line (time, "
        "level, event, supervisor, agent, item, message; docs/logging.md). Also "
        "$HUBVISOR_LOG_FORMAT.",
    ),
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
    cluster_option(),  # --redis-cluster SEEDS: --redis redis+cluster://SEEDS
    click.option(
        "--work",
        type=click.Choice(["sqlite", "memory"]),
        default=None,
        help="Where a hub without --redis keeps its work: 'sqlite' (the default) in a "
        "SQLite database in --state-dir, kept across restarts and crashes; 'memory': in the "
        "hub's memory only, lost when it stops.",
    ),
    click.option(
        "--state-dir",
        metavar="DIR",
        envvar="HUBVISOR_STATE_DIR",
        default=None,
        help="The directory of the SQLite work store, created 0700; one hub at a time "
        "(default: $XDG_STATE_HOME/hubvisor/<hub id>/, else "
        "~/.local/state/hubvisor/<hub id>/; also $HUBVISOR_STATE_DIR).",
    ),
    click.option(
        "--fsync",
        type=click.Choice(["normal", "always"]),
        default="normal",
        show_default=True,
        help="With the SQLite store: 'normal' syncs the write-ahead log at checkpoints (a "
        "crash of the hub loses nothing acknowledged; a power loss may lose the last "
        "commits); 'always' syncs every commit (survives a power loss, slower).",
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
        default=_LIMITS.max_connections,
        show_default=True,
        help="Control connections served at once; one more is told the hub is busy and "
        "closed (clients retry), so a flood of connections cannot fill the hub's fd table.",
    ),
    click.option(
        "--control-idle-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=_LIMITS.idle_timeout,
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


# --- Redis behind Sentinel (issue 23) ---
from . import _redis_sentinel  # noqa: E402

_common += [_redis_sentinel.CLI_OPTION, _redis_sentinel.REPLICAS_OPTION]
# --- end Sentinel ---


def _check_redis_url(value: str | None) -> str | None:
    if value is not None:
        try:
            from ._registry_redis import RedisMirror  # trio and attrs: only when --redis is given

            RedisMirror(value)
        except ValueError as exc:  # the message never shows the password
            raise click.BadParameter(str(exc), param_hint="--redis") from None
    return value


def _check_metrics(value: str | None) -> str | None:
    if value is not None:
        try:  # MissingExtra (a ConfigError) without hubvisor[metrics]
            from ._metrics import parse_address

            parse_address(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--metrics") from None
    return value


def _with_common(f: Any) -> Any:
    for option in reversed(_common):
        f = option(f)
    return f


class _Main(click.Group):
    """The ``hubvisor`` group; ``top`` (rich.live, /proc sampling) is loaded when named."""

    _LAZY = {"top": "supervisor._top"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._LAZY and cmd_name not in self.commands:
            module = importlib.import_module(self._LAZY[cmd_name])
            self.add_command(getattr(module, cmd_name))
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Main)
@click.version_option(package_name="hubvisor")
def main() -> None:
    """hubvisor: an OTP-style supervision tree for the processes of AI coding agents."""


@main.command()
@click.argument("spec")
@_with_common
def run(spec: str, **options: Any) -> None:
    """Run the supervision tree SPEC (path/to/file.py[:attr] or module[:attr])."""
    fold_cluster_option(options)
    _setup_logging(options)
    _run_or_explain(lambda: load_spec(spec), options)


def _run_or_explain(tree: Any, options: dict[str, Any], services: Sequence[Service] = ()) -> None:
    from ._daemon import run_hub

    _redis_sentinel.with_sentinel(options)
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
    from ._demo import DemoFeeder, demo_spec

    fold_cluster_option(options)
    _setup_logging(options)
    fresh = (
        options.get("redis") is None
        and options.get("work") != "memory"
        and options.get("state_dir") is None
    )
    if not fresh:
        _run_or_explain(  # Redis too: its planner's review waits for the pieces (issue 21)
            lambda: demo_spec(crash_rate=crash_rate, hang_rate=hang_rate),
            options,
            services=[DemoFeeder(every=every)],
        )
        return
    # The demo starts clean: its SQLite store lives in a fresh directory, removed when it
    # ends (--state-dir DIR keeps it, and a second run there resumes its work).
    import logging
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hubvisor-demo-") as state:
        logging.getLogger("hubvisor").info(
            "demo: work kept in SQLite in a fresh directory, %s, removed when the demo "
            "ends (--state-dir DIR keeps it)",
            state,
        )
        _run_or_explain(
            lambda: demo_spec(crash_rate=crash_rate, hang_rate=hang_rate),
            {**options, "state_dir": state},
            services=[DemoFeeder(every=every)],
        )


@main.command()
@click.argument("spec")
def check(spec: str) -> None:
    """Load SPEC and check it without starting anything."""
    from ._hub import Hub
    from ._spec import check_specs

    try:
        tree = load_spec(spec)
        check_specs(tree)
        Hub(tree)
    except InvalidSpec as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{spec}: OK")


_SOCKET_HELP = (
    "The hub's control socket (default: $HUBVISOR_SOCKET, else the default path for --hub-id)."
)
_HUB_ID_HELP = (
    "The id of the hub to control (its root spec's name; default: $HUBVISOR_HUB_ID, else "
    "the one hub running, else hub)."
)


@main.group()
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=_SOCKET_HELP,
)
@click.option("--hub-id", default=None, help=_HUB_ID_HELP)
@click.pass_context
def ctl(ctx: click.Context, socket_path: Path | None, hub_id: str | None) -> None:
    """Control a running hub."""
    ctx.obj = socket_path or (default_socket_path(hub_id) if hub_id else None)


@main.group()
def work() -> None:
    """Work items: list them, show one, retry a dead one, wait for them to end."""


class _Lines(list[tuple[int, Any]]):
    """Several JSON values read from stdin, one a line: ``(line number, value)``."""


class _JsonValue(click.ParamType[Any]):
    """A JSON value from the command line, or from stdin for ``-``: one JSON value (it
    may span lines), or JSON lines, one value a line (then a :class:`_Lines`)."""

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
            if value == "-" and sum(1 for line in text.splitlines() if line.strip()) > 1:
                return self._lines(text, param, ctx)
            self.fail(f"{where} is not JSON ({exc}); {example}", param, ctx)
        if parsed is None:
            self.fail(f"{where} is null; {example}", param, ctx)
        return parsed

    def _lines(self, text: str, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Every line of ``text`` checked before anything is sent: the first bad one stops
        the command (exit 2) with nothing done."""
        found = _Lines()
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = loads_request(line)
            except ValueError as exc:
                self.fail(
                    f"stdin line {number} is not JSON ({exc}); nothing was sent: give one "
                    """JSON value per line, e.g. {"n": 3}""",
                    param,
                    ctx,
                )
            if value is None:
                self.fail(f"stdin line {number} is null; nothing was sent", param, ctx)
            found.append((number, value))
        return found


def _param(f: Field) -> click.Parameter:
    """The command-line argument or option of one field of an op."""
    kind: Any = f.kind
    if f.kind is float:
        kind = click.FloatRange(min=f.minimum)
    elif f.kind is list and f.flag is None:
        return click.Argument([f.name], nargs=-1, required=f.required, metavar=f.metavar)
    elif f.minimum is not None:
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


def _show(op: Op, result: Any, args: dict[str, Any]) -> None:
    """Print ``result`` with the op's printer (rich is imported here, not for every command)."""
    from .control.printers import PRINTERS

    show = PRINTERS.get(op.name)
    if show is None:  # an op added to OPS without a printer: print it plainly
        click.echo(result)
    else:
        show(result, args)


def _print_stream(
    op: Op,
    path: Path,
    req: dict[str, Any],
    as_json: bool,
    timeout: Any,
    show: Callable[[Any, dict[str, Any]], None] | None = None,
) -> list[Any]:
    """Print each item of a stream as it comes (with ``show``, else the op's printer);
    the items printed."""
    args = {k: v for k, v in req.items() if k != "op"}
    printed = []
    try:
        for answer in stream(path, req, timeout):
            if "dropped" in answer:
                click.echo(
                    f"hubvisor: the hub dropped {answer['dropped']} {op.name} items here: "
                    "this client read too slowly",
                    err=True,
                )
                continue
            printed.append(answer["item"])
            if as_json:
                click.echo(dumps(answer["item"]))
            elif show is not None:
                show(answer["item"], args)
            else:
                _show(op, answer["item"], args)
            sys.stdout.flush()  # a reader at the other end of a pipe sees each line now
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # e.g. `| head`: the reader is gone, and so is the need to print
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    return printed


def _run_lines(
    op: Op,
    path: Path,
    args: dict[str, Any],
    key: str,
    lines: _Lines,
    as_json: bool,
    timeout: float | None,
    quiet: bool = False,
) -> list[Any]:
    """Run ``op`` once per line read from stdin (``key`` from each line), over one
    connection, printing each result as it comes (``quiet``: none); stop at the first one
    the hub refuses. The results."""
    done = 0
    results = []
    at = 0  # the stdin line of the request being answered

    def requests() -> Iterator[dict[str, Any]]:
        nonlocal at
        for number, value in lines:
            at = number
            yield {"op": op.name, **args, key: value}

    try:
        for result in request_many(path, requests(), timeout):
            done += 1
            results.append(result)
            if quiet:
                continue
            if as_json:
                click.echo(dumps(result))
            else:
                _show(op, result, {**args, key: lines[done - 1][1]})
            sys.stdout.flush()
    except NoHubRunning:
        raise
    except ControlClientError as exc:
        raise click.ClickException(
            f"stdin line {at}: {exc}; the {done} lines before it were sent (their results "
            f"are printed above), it and the {len(lines) - done - 1} after it were not"
        ) from exc
    return results


def _where_options() -> list[click.Parameter]:
    """``--socket`` and ``--hub-id``, which every control command takes."""
    return [
        click.Option(
            ["--socket", "socket_path"],
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help=_SOCKET_HELP,
        ),
        click.Option(["--hub-id"], default=None, help=_HUB_ID_HELP),
    ]


def _timeout_help(op: Op) -> str:
    if op.name == "submit":
        return (
            f"Seconds to wait for the answer (default: {FAST_TIMEOUT:g}); with --wait, for "
            "the item to end (default: as long as it takes)."
        )
    if op.stream:
        return f"Seconds to wait for each line (default: {FAST_TIMEOUT:g}; for ever with -f)"
    if op.name == "stop":
        return (
            f"Seconds to wait for the answer (default: {FAST_TIMEOUT:g}); with --wait, for "
            "the hub to be gone (default: as long as it takes)."
        )
    budget = ", plus the longest the hub may need for it" if op.budget else ""
    return f"Seconds to wait for the answer (default: {FAST_TIMEOUT:g}{budget})"


_WAIT_OPTION = click.Option(
    ["--wait"],
    is_flag=True,
    help="Wait until the item has ended and print its result (exit 0), or its error on "
    f"stderr (exit 1: failed, dead...); exit {WAIT_TIMED_OUT} if --timeout runs out first. "
    "With JSON lines on stdin: every item, as `work wait` prints them.",
)


_STOP_WAIT_OPTION = click.Option(
    ["--wait"],
    is_flag=True,
    help="Wait until the hub has stopped and its process is gone; exit with the hub's "
    f"exit status (0 when it does not say), or {WAIT_TIMED_OUT} if --timeout runs out "
    "first.",
)


def _stop_and_exit(path: Path, timeout: float | None) -> None:
    """``hubvisor stop --wait``: stop the hub, wait until it is gone, exit with its status."""
    try:
        code = stop_and_wait(path, timeout)
    except TimeoutError as exc:
        click.echo(f"hubvisor: {exc}; it goes on stopping", err=True)
        sys.exit(WAIT_TIMED_OUT)
    click.echo("stopped" if code is None else f"stopped (exit status {code})")
    sys.exit(code or 0)


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
    # An op with a timeout of its own (work_wait) takes it as --timeout instead.
    own_timeout = any(f.name == "timeout" for f in op.fields)
    if not own_timeout:
        params.append(
            click.Option(
                ["--timeout"],
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help=_timeout_help(op),
            )
        )
    if op.name == "submit":
        params.append(_WAIT_OPTION)
    if op.name == "stop":
        params.append(_STOP_WAIT_OPTION)
    params.extend(_where_options())

    def callback(
        as_json: bool,
        timeout: float | None,
        socket_path: Path | None,
        hub_id: str | None,
        wait: bool = False,
        **values: Any,
    ) -> None:
        obj = click.get_current_context().obj
        path = (
            socket_path
            or (default_socket_path(hub_id) if hub_id else None)
            or (obj if isinstance(obj, Path) else None)
            or env_socket_path()
        )
        if own_timeout:
            values["timeout"], timeout = timeout, None
        args = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in values.items()
            if v is not None and v is not False and v != ()
        }
        try:
            if op.name == "stop" and wait:
                _stop_and_exit(path, timeout)
            _carry_out(op, path, args, as_json, timeout, wait)
        except NoHubRunning as exc:
            raise NoHubExit(no_hub_report(path)) from exc
        except ControlClientError as exc:
            raise click.ClickException(str(exc)) from exc

    help_text = op.help + ("\n\n" + "\n\n".join(arguments) if arguments else "")
    return click.Command(name or op.name, callback=callback, params=params, help=help_text)


def _carry_out(
    op: Op, path: Path, args: dict[str, Any], as_json: bool, timeout: float | None, wait: bool
) -> None:
    """Send the op's request(s) and print the outcome; ``wait``: ``submit --wait``."""
    req = {"op": op.name, **args}
    many = [(k, v) for k, v in args.items() if isinstance(v, _Lines)]
    if many:
        done = _run_lines(op, path, args, *many[0], as_json, None if wait else timeout, wait)
        if wait:
            if any(item.get("stored") is False for item in done):
                from .control.printers import warn_not_stored

                warn_not_stored()
            _wait_and_exit(path, [item["id"] for item in done], timeout, as_json, single=False)
        return
    if op.stream:
        items = _print_stream(op, path, req, as_json, timeout)
        if op.waits:
            sys.exit(wait_exit_status(items))
        return
    result = request(path, req, None if wait else timeout)
    if wait:
        if result.get("stored") is False:
            from .control.printers import warn_not_stored

            warn_not_stored()
        _wait_and_exit(path, [result["id"]], timeout, as_json, single=True)
    if as_json:
        click.echo(dumps(result, indent=2))
    else:
        _show(op, result, args)


def _wait_and_exit(
    path: Path, ids: list[str], timeout: float | None, as_json: bool, *, single: bool
) -> None:
    """Wait for the items ``ids`` to end, print them, exit with the wait's status."""
    req: dict[str, Any] = {"op": "work_wait", "ids": ids}
    if timeout is not None:
        req["timeout"] = timeout
    show = None
    if single and not as_json:
        from .control.printers import show_result

        show = show_result
    items = _print_stream(OPS["work_wait"], path, req, as_json, None, show)
    sys.exit(wait_exit_status(items))


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
