"""hubvisor's exception hierarchy: every error names the value and the fix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
    "ItemFailed",
    "MaxAgentsExceeded",
    "NotStored",
    "ServiceFailed",
    "SpawnError",
    "SupervisorEscalation",
    "UnknownEventKind",
    "WaitTimeout",
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


class WaitTimeout(ControlError, TimeoutError):
    """A wait for work items ran out of time before they ended; they go on.

    Raised by :meth:`WorkService.wait <supervisor.WorkService.wait>` (in the hub) and by
    :meth:`Client.wait <supervisor.Client.wait>` and the other waits of the clients.

    Attributes:
        item_ids: the items that had not ended.
        timeout: the seconds waited.
        items: each of them as last seen (a :class:`~supervisor.WorkItem` in the hub, the
            item's JSON over the control socket), in the order of ``item_ids``.
    """

    def __init__(self, item_ids: Sequence[str], timeout: float, items: Sequence[Any] = ()) -> None:
        self.item_ids = tuple(item_ids)
        self.timeout = timeout
        self.items = tuple(items)
        shown = []
        for n, item_id in enumerate(self.item_ids[:_SHOWN]):
            status = _status_of(self.items[n]) if n < len(self.items) else ""
            shown.append(f"{item_id!r} (still {status})" if status else repr(item_id))
        if len(self.item_ids) > _SHOWN:
            shown.append(f"{len(self.item_ids) - _SHOWN} more")
        noun = "work item" if len(self.item_ids) == 1 else "work items"
        super().__init__(
            f"{noun} {', '.join(shown)} did not end within {timeout:g}s; the hub goes on with "
            "them: wait again, or see them with `hubvisor work show ID`"
        )


class ItemFailed(HubvisorError):
    """A work item ended without completing: failed, dead (or, with the work controls,
    cancelled or timed out). Raised by the clients' :meth:`~supervisor.Client.wait`.

    Attributes:
        item_id: the item's id.
        status: how it ended (``"failed"``, ``"dead"``, ...).
        error: the last error (the agent's, or why it was dead-lettered).
        item: the whole item as ``hubvisor work show ID --json`` prints it.
        history: how each attempt ended (``item["history"]``).
    """

    def __init__(self, item: Mapping[str, Any]) -> None:
        self.item = dict(item)
        self.item_id = str(item.get("id"))
        self.status = str(item.get("status"))
        self.error = item.get("error")
        self.history = list(item.get("history") or ())
        super().__init__(
            f"work item {self.item_id!r} ended {self.status}: {self.error or 'no error given'}"
            f" ({len(self.history)} attempts; `hubvisor work show {self.item_id}` shows them, "
            f"`hubvisor work retry {self.item_id}` queues it again)"
        )


class NotStored(ControlError):
    """``submit(..., require_stored=True)``: the hub queued the item but its store did not
    make it durable in time (Redis did not answer). The hub holds it and writes it when
    the store is back; it is lost if the hub dies first. Submitting again would queue it
    twice: wait, or check it with ``show(item_id)``.

    Attributes:
        item_id: the item the hub holds.
    """

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        super().__init__(
            f"work item {item_id!r} is queued in the hub but not durable yet (its store did "
            "not answer in time); the hub writes it when the store is back and loses it only "
            "if it dies first; do not submit it again: check it with `hubvisor work show "
            f"{item_id}`"
        )


_SHOWN = 10  # item ids a WaitTimeout names


def _status_of(item: Any) -> str:
    """The status of an item, a :class:`WorkItem` or its JSON ("" when unknown)."""
    status = item.get("status") if isinstance(item, Mapping) else getattr(item, "status", "")
    return str(status or "")
