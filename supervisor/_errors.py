"""hubvisor's exception hierarchy: every error names the value and the fix."""

from __future__ import annotations

from strategies._errors import HubvisorError, InvalidPolicy

__all__ = [
    "ChildNotFound",
    "ConfigError",
    "ControlError",
    "HubvisorError",
    "InvalidChildSpec",
    "InvalidMirrorConfig",
    "InvalidPolicy",
    "InvalidPoolSpec",
    "InvalidSpec",
    "InvalidSupervisorSpec",
    "MaxAgentsExceeded",
    "ServiceFailed",
    "SpawnError",
    "SupervisorEscalation",
    "UnknownEventKind",
]


class InvalidSpec(HubvisorError, ValueError):
    """A supervision spec is invalid; raised when the spec is built, before anything runs."""


class InvalidChildSpec(InvalidSpec):
    """A :class:`~supervisor.ChildSpec` field has a bad value."""


class InvalidSupervisorSpec(InvalidSpec):
    """A :class:`~supervisor.SupervisorSpec` is inconsistent (e.g. duplicate child ids)."""


class InvalidPoolSpec(InvalidSpec):
    """A :class:`~supervisor.PoolSpec` is inconsistent (e.g. size larger than max_size)."""


class ConfigError(HubvisorError, ValueError):
    """A setting of the hub or of one of its parts (not a spec) has a bad value."""


class SpawnError(HubvisorError):
    """A child's process could not be started (missing executable, bad cwd, ...).

    The supervisor treats it as a failed start: it goes through the restart policy like
    any crash, and a permanent one escalates with this message (give the supervisor a
    backoff for a transient problem to heal before the intensity is used up). A spawn the
    hub cannot afford (no free fds, no memory) is not the child's fault: it is retried
    with backoff and never counts against the intensity.
    """


class SupervisorEscalation(HubvisorError):
    """A supervisor exhausted its restart intensity and gave up.

    Attributes:
        supervisor: path of the supervisor that gave up, e.g. ``"hub/worker-pool"``.
        child_id: the child whose failure exceeded the limit.
        limit: the limit in words, e.g. ``"3 restarts in 5s"``.
        reason: what the child's last failure was, e.g. ``"exited with code 1"``.
    """

    def __init__(self, supervisor: str, child_id: str, limit: str, reason: str) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.limit = limit
        self.reason = reason
        super().__init__(
            f"supervisor {supervisor!r} gave up: child {child_id!r} ({reason}) exceeded "
            f"the restart intensity of {limit}; fix the child or raise the supervisor's "
            f"intensity"
        )


class ControlError(HubvisorError):
    """A run-time control request cannot be carried out (unknown child, wrong state...)."""


class ChildNotFound(ControlError, KeyError):
    """No child with that id exists in the supervisor or tree."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "child not found"


class MaxAgentsExceeded(ControlError):
    """Starting one more child would exceed the hub's ``max_agents`` limit."""


class ServiceFailed(HubvisorError):
    """A hub service the hub cannot run without (the work service) failed for good; the
    hub stopped its tree instead of running on as a hub that accepts work and never
    dispatches it. ``hubvisor run`` exits 1 with this message."""


class UnknownEventKind(HubvisorError, ValueError):
    """``EventBus.subscribe(kinds=...)`` named a kind that no event has (a typo would
    otherwise deliver nothing, silently)."""


class InvalidMirrorConfig(HubvisorError, ValueError):
    """A registry mirror (e.g. :class:`~supervisor.RedisMirror`) got a bad URL or option."""
