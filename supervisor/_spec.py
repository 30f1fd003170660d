"""Declarative supervision specs: frozen attrs classes checked when they are built."""

from __future__ import annotations

import enum
import math
import os
import re
import signal
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

import attrs

from strategies import (
    BackoffPolicy,
    Intensity,
    IntensityPolicy,
    NoBackoff,
    OneForOne,
    RestartStrategy,
)

from ._errors import InvalidChildSpec, InvalidPoolSpec, InvalidSupervisorSpec
from ._scale import Autoscale

__all__ = [
    "BRUTAL_KILL",
    "INFINITY",
    "ChildSpec",
    "OutputSpec",
    "PoolSpec",
    "RestartType",
    "SupervisorSpec",
    "agent_ids",
    "check_specs",
]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RestartType(enum.Enum):
    """When a child that exited is restarted (OTP's restart types).

    * ``PERMANENT``: always.
    * ``TRANSIENT``: only after an abnormal exit (non-zero code, or killed by a signal
      the supervisor did not send).
    * ``TEMPORARY``: never; the child is removed when it exits.
    """

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


BRUTAL_KILL: Literal["brutal_kill"] = "brutal_kill"
"""``shutdown=BRUTAL_KILL`` stops a child with SIGKILL at once, without a graceful signal."""

INFINITY: float = math.inf
"""``shutdown=INFINITY`` (OTP's ``infinity``) waits for the child to stop however long it
takes after the stop signal, never sending SIGKILL; a second Ctrl-C still kills it."""

Shutdown: TypeAlias = float | Literal["brutal_kill"]


def _check_id(cls: type[Exception], owner: str, field: str, value: object) -> None:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise cls(
            f"{owner}.{field} must be 1-128 characters of letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit (got {value!r}); e.g. {field}='worker-agent-1'"
        )


def _check_seconds(
    cls: type[Exception], owner: str, field: str, value: object, *, allow_zero: bool = True
) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise cls(
            f"{owner}.{field} must be a finite number of seconds {bound} (got {value!r}); "
            f"e.g. {field}=5.0"
        )


def _to_argv(value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes):
        raise InvalidChildSpec(
            f"ChildSpec.argv must be a list of strings, never a shell string (got {value!r}); "
            f"write e.g. argv={value.split()!r} and no shell is involved"
            if isinstance(value, str)
            else f"ChildSpec.argv must be a list of str (got bytes {value!r})"
        )
    if not isinstance(value, Iterable):
        raise InvalidChildSpec(
            f"ChildSpec.argv must be a list of strings (got {value!r}); e.g. argv=['sleep', '60']"
        )
    argv = tuple(value)
    if not argv:
        raise InvalidChildSpec(
            "ChildSpec.argv is empty; give the program and its arguments, e.g. "
            "argv=['python', '-m', 'agents.worker']"
        )
    for i, arg in enumerate(argv):
        if not isinstance(arg, str) or "\0" in arg:
            raise InvalidChildSpec(
                f"ChildSpec.argv[{i}] must be a str without NUL bytes (got {arg!r}); "
                "convert paths and numbers with str()"
            )
    if not argv[0]:
        raise InvalidChildSpec("ChildSpec.argv[0] is empty; it must name the program to run")
    return argv


def _to_env(value: object) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise InvalidChildSpec(
            f"ChildSpec.env must be a mapping of str to str (got {value!r}); "
            "e.g. env={'LOG_LEVEL': 'debug'}"
        )
    env: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k or "=" in k or "\0" in k:
            raise InvalidChildSpec(
                f"ChildSpec.env key {k!r} is not a valid variable name; use a non-empty str "
                "without '=' or NUL"
            )
        if not isinstance(v, str) or "\0" in v:
            raise InvalidChildSpec(
                f"ChildSpec.env[{k!r}] must be a str without NUL (got {v!r}); "
                f"convert it, e.g. env={{{k!r}: str(...)}}"
            )
        env[k] = v
    return MappingProxyType(env)


def _to_restart(value: object) -> RestartType:
    if isinstance(value, RestartType):
        return value
    try:
        return RestartType(value)
    except ValueError:
        raise InvalidChildSpec(
            f"ChildSpec.restart must be one of 'permanent', 'transient', 'temporary' "
            f"(got {value!r})"
        ) from None


def _to_signal(value: object) -> signal.Signals:
    try:
        if isinstance(value, signal.Signals):
            return value
        if isinstance(value, str):
            name = value.upper()
            return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        if isinstance(value, int) and not isinstance(value, bool):
            return signal.Signals(value)
    except (KeyError, ValueError):
        pass
    raise InvalidChildSpec(
        f"ChildSpec.stop_signal must be a signal name or number (got {value!r}); "
        "e.g. stop_signal='SIGTERM' or signal.SIGINT"
    )


def _to_shutdown(value: object) -> Shutdown:
    if value == BRUTAL_KILL:
        return BRUTAL_KILL
    if value == INFINITY or value == "infinity":
        return INFINITY
    _check_seconds(InvalidChildSpec, "ChildSpec", "shutdown", value)
    if isinstance(value, str):  # pragma: no cover - _check_seconds already refused it
        raise AssertionError
    return float(value)  # type: ignore[arg-type]


@attrs.frozen
class OutputSpec:
    """What happens to a child's stdout and stderr.

    Args:
        capture: read both streams line by line (``False``: inherit the hub's).
        ring_lines: how many recent lines to keep per child for ``logs``.
        max_line_bytes: longer lines are cut to this size (the rest is dropped and the
            cut is marked with ``…``), so one child writing without newlines cannot grow
            the hub's memory.
        events: publish each line as a :class:`~supervisor.ChildOutput` event.
    """

    capture: bool = True
    ring_lines: int = attrs.field(default=1000)
    max_line_bytes: int = attrs.field(default=16384)
    events: bool = True

    @ring_lines.validator
    def _check_ring(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidChildSpec(
                f"OutputSpec.ring_lines must be an int >= 0 (got {value!r}); e.g. ring_lines=1000"
            )

    @max_line_bytes.validator
    def _check_line(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 80:
            raise InvalidChildSpec(
                f"OutputSpec.max_line_bytes must be an int >= 80 (got {value!r}); "
                "e.g. max_line_bytes=16384"
            )


def _check_optional_seconds(field: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            _check_seconds(InvalidChildSpec, "ChildSpec", field, value, allow_zero=False)

    return check


@attrs.frozen(kw_only=True)
class ChildSpec:
    """One supervised OS process.

    Args:
        id: unique within the tree; names the child in events, logs and the registry.
        argv: the program and its arguments, as a list (no shell is involved).
        env: variables added to the child's environment (on top of the hub's when
            ``inherit_env`` is true).
        inherit_env: start from the hub's environment (``True``) or from an empty one.
        cwd: working directory (default: the hub's).
        restart: ``"permanent"``, ``"transient"`` or ``"temporary"`` (see :class:`RestartType`).
        shutdown: graceful stop timeout in seconds: send ``stop_signal`` (see
            ``kill_mode``), wait this long, then SIGKILL the group. ``BRUTAL_KILL``
            sends SIGKILL at once; ``INFINITY`` (or ``"infinity"``) waits as long as the
            child takes (for an agent that must finish its task), so the hub's own stop
            waits for it too, until a second Ctrl-C kills it.
        stop_signal: the graceful stop signal (default SIGTERM).
        kill_mode: who gets ``stop_signal`` (like systemd's ``KillMode=``).
            ``"mixed"`` (default): the hub sends ``STOP`` on the agent channel and the
            signal to the child's own process only; the rest of its process group (a
            CLI the agent runs, say) is left to the agent, and gets SIGKILL once the
            child has exited or its ``shutdown`` time ran out. So an agent can hand its
            item back or let its subprocess finish instead of seeing it killed under
            it. ``"group"``: the signal goes to the whole group at once (what
            hubvisor did before ``kill_mode`` existed).
        start_period: a child that exits sooner than this after it was spawned counts
            as a failed start; after it the child is *running*.
        heartbeat_timeout: for children that heartbeat over the notify channel: how long
            silence may last before the child counts as hung (``None``: not watched). A
            hung child is killed (``stop_signal``, then SIGKILL after ``shutdown``) and
            restarted like a crashed one. The first message is due this long after spawn.
        notify: give the child a notify channel (``HUBVISOR_NOTIFY_FD``) for ``READY``,
            ``HEARTBEAT`` and ``STATUS=...`` messages (see ``docs/registry.md``).
        ready: when the child counts as *running*: ``"start_period"`` (after
            ``start_period`` seconds, or earlier if it says ``READY``) or ``"notify"``
            (only when it says ``READY``).
        ready_timeout: with ``ready="notify"``: a child that has not said ``READY`` this
            many seconds after spawn is killed like a hung one and restarted by policy
            (``None``: wait for ever). Like systemd's ``TimeoutStartSec``.
        agent_type: the kind of agent (``"worker"``, ``"qc"``...), for the registry.
        output: capture of stdout and stderr (see :class:`OutputSpec`).
        memory_limit: bytes of resident memory the child's whole process group may use;
            over it, the hub stops the child gracefully and its restart policy decides,
            the exit saying why (``"over memory limit: 1.2 GiB > 1 GiB"``). Checked by
            :class:`~supervisor.LimitsService` (``hubvisor run`` runs one) at its interval.
        cpu_limit: cores the process group may use, averaged between two checks (``1.5``:
            one and a half cores); over it twice in a row, the same as ``memory_limit``.

    Example::

        ChildSpec(id="planner", argv=["python", "-m", "agents.planning"], shutdown=10)
    """

    id: str = attrs.field()
    argv: tuple[str, ...] = attrs.field(converter=_to_argv)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_to_env)
    inherit_env: bool = True
    cwd: str | None = attrs.field(default=None)
    restart: RestartType = attrs.field(default=RestartType.PERMANENT, converter=_to_restart)
    shutdown: Shutdown = attrs.field(default=5.0, converter=_to_shutdown)
    stop_signal: signal.Signals = attrs.field(default=signal.SIGTERM, converter=_to_signal)
    kill_mode: Literal["mixed", "group"] = attrs.field(default="mixed")
    start_period: float = attrs.field(default=1.0)
    heartbeat_timeout: float | None = attrs.field(
        default=None, validator=_check_optional_seconds("heartbeat_timeout")
    )
    agent_type: str | None = attrs.field(default=None)
    output: OutputSpec = attrs.field(factory=OutputSpec)
    notify: bool = attrs.field(default=True)
    ready: Literal["start_period", "notify"] = attrs.field(default="start_period")
    ready_timeout: float | None = attrs.field(
        default=None, validator=_check_optional_seconds("ready_timeout")
    )
    memory_limit: int | None = attrs.field(default=None)
    cpu_limit: float | None = attrs.field(
        default=None, validator=_check_optional_seconds("cpu_limit")
    )

    @memory_limit.validator
    def _check_memory_limit(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value <= 0
        ):
            raise InvalidChildSpec(
                f"ChildSpec.memory_limit must be a number of bytes > 0 or None (got {value!r}); "
                "e.g. memory_limit=2 * 1024**3 for 2 GiB"
            )

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.notify, bool):
            raise InvalidChildSpec(f"ChildSpec.notify must be True or False (got {self.notify!r})")
        if self.ready not in ("start_period", "notify"):
            raise InvalidChildSpec(
                f"ChildSpec.ready must be 'start_period' or 'notify' (got {self.ready!r}); "
                "'notify' waits for the child to send READY on its notify channel"
            )
        if self.ready_timeout is not None and self.ready != "notify":
            raise InvalidChildSpec(
                f"ChildSpec {self.id!r}: ready_timeout={self.ready_timeout!r} only applies to "
                "ready='notify'; set ready='notify' or drop ready_timeout (start_period "
                "already bounds ready='start_period')"
            )
        if not self.notify:
            for field, on in (
                ("ready", self.ready == "notify"),
                ("heartbeat_timeout", self.heartbeat_timeout is not None),
            ):
                if on:
                    raise InvalidChildSpec(
                        f"ChildSpec {self.id!r}: {field}={getattr(self, field)!r} needs the "
                        "notify channel, but notify=False; set notify=True or drop "
                        f"{field}"
                    )

    @kill_mode.validator
    def _check_kill_mode(self, attribute: attrs.Attribute[str], value: object) -> None:
        if value not in ("mixed", "group"):
            raise InvalidChildSpec(
                f"ChildSpec.kill_mode must be 'mixed' or 'group' (got {value!r}); 'mixed' "
                "signals the child alone and kills its group after it exits, 'group' "
                "signals the whole group at once"
            )

    @id.validator
    def _check_id(self, attribute: attrs.Attribute[str], value: str) -> None:
        _check_id(InvalidChildSpec, "ChildSpec", "id", value)

    @cwd.validator
    def _check_cwd(self, attribute: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None and (not isinstance(value, str | os.PathLike) or not str(value)):
            raise InvalidChildSpec(
                f"ChildSpec.cwd must be a directory path or None (got {value!r})"
            )

    @start_period.validator
    def _check_start_period(self, attribute: attrs.Attribute[float], value: float) -> None:
        _check_seconds(InvalidChildSpec, "ChildSpec", "start_period", value)

    @agent_type.validator
    def _check_type(self, attribute: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None:
            _check_id(InvalidChildSpec, "ChildSpec", "agent_type", value)

    @output.validator
    def _check_output(self, attribute: attrs.Attribute[OutputSpec], value: OutputSpec) -> None:
        if not isinstance(value, OutputSpec):
            raise InvalidChildSpec(
                f"ChildSpec.output must be an OutputSpec (got {value!r}); "
                "e.g. output=OutputSpec(ring_lines=200)"
            )

    def __hash__(self) -> int:
        # attrs would hash every field, and the read-only env mapping is unhashable.
        return hash((self.id, self.argv))


def _check_policy(
    cls: type[Exception], owner: str, field: str, value: object, proto: type, example: str
) -> None:
    if not isinstance(value, proto):
        raise cls(
            f"{owner}.{field} must implement strategies.{proto.__name__} (got {value!r}); "
            f"e.g. {field}={example}"
        )


def _policies(cls: type[Exception], owner: str, inst: Any) -> None:
    _check_policy(cls, owner, "strategy", inst.strategy, RestartStrategy, "OneForOne()")
    _check_policy(cls, owner, "intensity", inst.intensity, IntensityPolicy, "Intensity(3, 5)")
    _check_policy(cls, owner, "backoff", inst.backoff, BackoffPolicy, "ExponentialBackoff()")


def _to_children(value: object) -> tuple[ChildSpec | SupervisorSpec | PoolSpec, ...]:
    if isinstance(value, ChildSpec | SupervisorSpec | PoolSpec) or not isinstance(value, Iterable):
        raise InvalidSupervisorSpec(
            f"SupervisorSpec.children must be a list of ChildSpec, SupervisorSpec or PoolSpec "
            f"(got {value!r}); wrap a single child in a list"
        )
    return tuple(value)


@attrs.frozen(kw_only=True)
class SupervisorSpec:
    """A supervisor: children started in order, watched, restarted by its policies.

    Args:
        name: unique among its siblings; the supervisor's path is its parents' names
            joined with ``/``.
        children: :class:`ChildSpec`, nested :class:`SupervisorSpec` or :class:`PoolSpec`,
            started in this order and stopped in the reverse.
        strategy: which siblings restart when one fails (``strategies.RestartStrategy``).
        intensity: when to give up (``strategies.IntensityPolicy``); giving up stops all
            children and fails to the parent.
        backoff: delay before a restart (``strategies.BackoffPolicy``).
        restart: how the *parent* restarts this supervisor when it gave up.

    Example::

        SupervisorSpec(
            name="planning",
            strategy=RestForOne(),
            intensity=Intensity(max_restarts=5, window=60),
            backoff=ExponentialBackoff(initial=0.5, cap=30),
            children=[ChildSpec(id="planner", argv=["python", "-m", "agents.planning"])],
        )
    """

    name: str = attrs.field()
    children: tuple[ChildSpec | SupervisorSpec | PoolSpec, ...] = attrs.field(
        converter=_to_children
    )
    strategy: RestartStrategy = attrs.field(factory=OneForOne)
    intensity: IntensityPolicy = attrs.field(factory=Intensity)
    backoff: BackoffPolicy = attrs.field(factory=NoBackoff)
    restart: RestartType = attrs.field(default=RestartType.PERMANENT, converter=_to_restart)

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        _check_id(InvalidSupervisorSpec, "SupervisorSpec", "name", value)

    def __attrs_post_init__(self) -> None:
        _policies(InvalidSupervisorSpec, "SupervisorSpec", self)
        seen: set[str] = set()
        for child in self.children:
            if not isinstance(child, ChildSpec | SupervisorSpec | PoolSpec):
                raise InvalidSupervisorSpec(
                    f"SupervisorSpec {self.name!r}: children must be ChildSpec, SupervisorSpec "
                    f"or PoolSpec (got {child!r})"
                )
            key = child.id if isinstance(child, ChildSpec) else child.name
            if key in seen:
                raise InvalidSupervisorSpec(
                    f"SupervisorSpec {self.name!r}: duplicate child id {key!r}; "
                    "give every child and nested supervisor a unique id/name"
                )
            seen.add(key)

    @property
    def id(self) -> str:
        """The supervisor's id among its siblings (its name)."""
        return self.name


def _pool_template(value: object) -> ChildSpec:
    if not isinstance(value, ChildSpec):
        raise InvalidPoolSpec(
            f"PoolSpec.template must be a ChildSpec (got {value!r}); its id is replaced by "
            "'<agent_type>-agent-<n>' for each member"
        )
    return value


@attrs.frozen(kw_only=True)
class PoolSpec:
    """``size`` interchangeable children of one agent type, resizable up to ``max_size``.

    Members are built from ``template`` with ids ``<agent_type>-agent-1``,
    ``<agent_type>-agent-2``... An id is kept across restarts of its member and the lowest
    free number is reused when the pool grows. Members start in order and stop
    concurrently, so stopping a pool of any size takes about one shutdown timeout.

    With ``autoscale`` (an :class:`~supervisor.Autoscale`) the hub grows the pool when
    items of its type wait and no member is idle, and retires idle members after a quiet
    period, within ``autoscale.min``..``max`` and ``max_agents``; ``size`` is where it
    starts (``0`` with ``min=0``: agents are spawned when work arrives).

    Example::

        PoolSpec(
            agent_type="worker",
            template=ChildSpec(id="worker", argv=["python", "-m", "agents.worker"]),
            size=4,
            max_size=32,
        )
        PoolSpec(agent_type="qc", template=..., size=0,
                 autoscale=Autoscale(min=0, max=8, scale_down_after=60))
    """

    agent_type: str = attrs.field()
    template: ChildSpec = attrs.field(converter=_pool_template)
    size: int = attrs.field(default=1)
    max_size: int = attrs.field(default=64)
    autoscale: Autoscale | None = attrs.field(default=None)
    name: str = attrs.field(
        default=attrs.Factory(lambda s: f"{s.agent_type}-pool", takes_self=True)
    )
    strategy: RestartStrategy = attrs.field(factory=OneForOne)
    intensity: IntensityPolicy = attrs.field(factory=lambda: Intensity(10, 10.0))
    backoff: BackoffPolicy = attrs.field(factory=NoBackoff)
    restart: RestartType = attrs.field(default=RestartType.PERMANENT, converter=_to_restart)
    labels: Mapping[str, str] = attrs.field(factory=dict)
    """Labels of the pool (e.g. ``{"tier": "large"}``): an item submitted with
    ``require`` goes only to members of a pool whose labels match (issue 21)."""

    @agent_type.validator
    def _check_type(self, attribute: attrs.Attribute[str], value: str) -> None:
        _check_id(InvalidPoolSpec, "PoolSpec", "agent_type", value)

    @labels.validator
    def _check_labels(self, attribute: attrs.Attribute[Mapping[str, str]], value: object) -> None:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and _ID_RE.match(k) and isinstance(v, str) and "=" not in k
            for k, v in value.items()
        ):
            raise InvalidPoolSpec(
                f"PoolSpec.labels must map label names (letters, digits, '_', '.' or '-') to "
                f"strings (got {value!r:.80}); e.g. labels={{'tier': 'large'}}"
            )

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        _check_id(InvalidPoolSpec, "PoolSpec", "name", value)

    def __attrs_post_init__(self) -> None:
        _policies(InvalidPoolSpec, "PoolSpec", self)
        for field in ("size", "max_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidPoolSpec(
                    f"PoolSpec.{field} must be an int >= 0 (got {value!r}); e.g. {field}=4"
                )
        if self.max_size < 1:
            raise InvalidPoolSpec(
                f"PoolSpec {self.name!r}: max_size must be >= 1 (got {self.max_size!r})"
            )
        if self.size > self.max_size:
            raise InvalidPoolSpec(
                f"PoolSpec {self.name!r}: size {self.size} is larger than max_size "
                f"{self.max_size}; lower size or raise max_size"
            )
        scale = self.autoscale
        if scale is not None:
            if not isinstance(scale, Autoscale):
                raise InvalidPoolSpec(
                    f"PoolSpec.autoscale must be an Autoscale or None (got {scale!r}); e.g. "
                    "autoscale=Autoscale(min=0, max=8)"
                )
            if scale.max > self.max_size:
                raise InvalidPoolSpec(
                    f"PoolSpec {self.name!r}: autoscale max {scale.max} is larger than "
                    f"max_size {self.max_size}; lower autoscale.max or raise max_size"
                )
            if not scale.min <= self.size <= scale.max:
                raise InvalidPoolSpec(
                    f"PoolSpec {self.name!r}: size {self.size} (the size it starts at) is "
                    f"outside autoscale's {scale.min}..{scale.max}; e.g. size={scale.min}"
                )

    @property
    def id(self) -> str:
        """The pool's id among its siblings (its name)."""
        return self.name

    def member_id(self, n: int) -> str:
        """The id of member number ``n`` (1-based): ``<agent_type>-agent-<n>``, or
        ``<name>-agent-<n>`` for a pool named otherwise than ``<agent_type>-pool`` (so
        that several pools of one type, one per tier, have distinct member ids)."""
        if self.name != f"{self.agent_type}-pool":
            return f"{self.name}-agent-{n}"
        return f"{self.agent_type}-agent-{n}"

    def member(self, n: int) -> ChildSpec:
        """The spec of member number ``n``."""
        return attrs.evolve(self.template, id=self.member_id(n), agent_type=self.agent_type)


AnySpec: TypeAlias = ChildSpec | SupervisorSpec | PoolSpec


def agent_ids(spec: AnySpec) -> list[str]:
    """Every agent id ``spec``'s subtree may use: its workers' ids, and for a pool the
    ids of every member up to ``max_size`` (a pool may grow)."""
    if isinstance(spec, ChildSpec):
        return [spec.id]
    if isinstance(spec, PoolSpec):
        return [spec.member_id(n) for n in range(1, spec.max_size + 1)]
    return [i for child in spec.children for i in agent_ids(child)]


def check_specs(root: SupervisorSpec | Sequence[AnySpec]) -> None:
    """Check a whole tree before starting it: every child id unique in the tree.

    Each spec checks its own fields when built; this adds the rules that span the tree.
    Pool member ids count for every member up to ``max_size``, since a pool may grow.

    Raises:
        InvalidSupervisorSpec: naming the duplicate id and the two places it appears.
    """
    roots: Sequence[AnySpec] = [root] if isinstance(root, SupervisorSpec) else list(root)
    owners: dict[str, str] = {}

    def claim(child_id: str, where: str) -> None:
        if child_id in owners:
            raise InvalidSupervisorSpec(
                f"child id {child_id!r} appears twice in the tree ({owners[child_id]} and "
                f"{where}); ids name agents in the registry and must be unique: rename one"
            )
        owners[child_id] = where

    def walk(spec: AnySpec, path: str) -> None:
        if isinstance(spec, ChildSpec | PoolSpec):
            where = path if isinstance(spec, ChildSpec) else f"{path}/{spec.name}"
            for child_id in agent_ids(spec):
                claim(child_id, where)
        else:
            for child in spec.children:
                walk(child, f"{path}/{spec.name}")

    for spec in roots:
        walk(spec, "")
