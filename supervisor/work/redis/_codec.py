"""How the work store names its keys and writes items to Redis, and back."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import trio

from .._item import AttemptRecord, ItemStatus, WorkItem


def _item_from(fields: Mapping[str, str]) -> WorkItem:
    hist = json.loads(fields.get("hist") or "[]")
    status = fields.get("st", "queued")
    return WorkItem(
        id=fields["id"],
        agent_type=fields["type"],
        payload=json.loads(fields["payload"]),
        max_deliveries=int(fields["max"]),
        created_at=float(fields.get("created") or 0),
        source=fields.get("src", "api"),
        status=ItemStatus(status) if status in set(ItemStatus) else ItemStatus.QUEUED,
        attempt=int(fields.get("att") or 0),
        deliveries=int(fields.get("dlv") or 0),
        # the agent holding it now (as in every queue): the hash keeps the one that
        # finished it too, which the history names
        agent=(fields.get("agent") or None) if status == "assigned" else None,
        result=json.loads(fields["result"]) if fields.get("result") else None,
        error=fields.get("error") or None,
        checkpoint=json.loads(fields["ckpt"]) if fields.get("ckpt") else None,
        history=[AttemptRecord(**h) for h in hist],
        key=fields.get("key") or None,  # issue 21: an idempotency key
        not_before=int(fields["nb"]) / 1000 if fields.get("nb") else None,  # issue 21
        time_limit=float(fields["tl"]) if fields.get("tl") else None,  # issue 21
        priority=int(fields.get("pr") or 0),  # issue 21: its stream's level
        require=json.loads(fields["req"]) if fields.get("req") else {},  # issue 21: its tier
    )


class Keys:
    """The keys of the queues under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._fenced: dict[str, tuple[str, str, str, str]] = {}  # type -> its keys

    def of(self, agent_type: str, name: str) -> str:
        """A key of ``agent_type``'s queue: ``P:work:{T}:name``."""
        return _type_key(self.prefix, agent_type, name)

    def items(self, agent_type: str) -> str:
        """The prefix of the item hashes of ``agent_type``."""
        return self.of(agent_type, "item:")

    def fenced(self, agent_type: str, item_id: str = "") -> tuple[str, ...]:
        """The keys a fenced script takes: stream, dead letters, log (and the item)."""
        keys = self._fenced.get(agent_type)
        if keys is None:  # made once per type: every write of an item names them
            of = self.of
            keys = (of(agent_type, "q"), of(agent_type, "dead"), of(agent_type, "log"), "")
            keys = self._fenced[agent_type] = (*keys[:3], self.items(agent_type))
        return (*keys[:3], keys[3] + item_id) if item_id else keys[:3]


def _type_key(prefix: str, agent_type: str, name: str) -> str:
    """A key of one agent type's queue; they share the hash tag ``{type}``."""
    return f"{prefix}:work:{{{agent_type}}}:{name}"


def _hub_key(prefix: str, hub_id: str) -> str:
    """A hub's liveness key (hash tag ``{hub id}``)."""
    return f"{prefix}:work:hub:{{{hub_id}}}"


def _wall(now: float) -> float:
    """The wall-clock time of trio's ``now``: the record in Redis is read by other hosts."""
    try:
        return now + time.time() - trio.current_time()
    except RuntimeError:  # outside trio
        return now


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _decode_map(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _text(value: Any) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _safe(text: str) -> str:
    """``text`` as valid UTF-8: a lone surrogate (bytes an agent read with
    surrogateescape) is written as its escape, ``\\udcff``, readable by anyone."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _size(args: Iterable[Any]) -> int:
    """About how many bytes a write's arguments hold (for the cap on held writes)."""
    return sum(len(a) if isinstance(a, str | bytes) else 16 for a in args)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
