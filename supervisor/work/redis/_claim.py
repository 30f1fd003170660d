"""A hub's claim of its id in Redis: one live hub per id, a dead one's work taken back."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

from ..._errors import ControlError, ServiceFailed
from ..._redis_link import clean_error, config_problem, redact_url
from ._codec import _alive, _decode_map, _hub_key, _text
from ._scripts import _HUB, _SHA, _UNHUB

if TYPE_CHECKING:
    import redis

_log = logging.getLogger("hubvisor")


class HubClaim:
    """This incarnation's hold on its hub id: the hub key (a hash with a TTL of one
    lease, renewed by each heartbeat) names its host, pid and token; another live hub
    with the same id is refused, a dead one (same host, pid gone) is replaced."""

    def __init__(self, prefix: str, lease: float) -> None:
        self.prefix = prefix
        self.lease = lease
        self.hub_id = ""
        self.token = secrets.token_hex(8)
        """This incarnation's fence: entries are leased to (hub id, token)."""
        self.replaces = ""  # the token of a dead incarnation of this hub id
        self.claimed = False  # this incarnation holds the hub id in Redis (checked)
        self.conflict: ServiceFailed | None = None

    def key(self, hub_id: str | None = None) -> str:
        return _hub_key(self.prefix, hub_id or self.hub_id)

    @property
    def hubs_key(self) -> str:
        return f"{self.prefix}:work:hubs"

    def check(self, hub_id: str, client: redis.Redis, url: str) -> None:
        """See :meth:`RedisWorkQueue.check_hub_id` (closes ``client``)."""
        import redis

        self.hub_id = hub_id
        try:
            self.register(client)
        except redis.RedisError as exc:
            problem = config_problem(exc, url)
            if problem is not None:
                raise ControlError(problem) from None
            _log.warning(
                "work: Redis at %s unreachable (%s); starting anyway",
                redact_url(url),
                clean_error(exc, url),
            )
        finally:
            client.close()

    def register(self, client: redis.Redis) -> None:
        """Refuse to run beside a live hub of the same id; take over a dead one's."""
        old = _decode_map(client.hgetall(self.key()))
        if old and old.get("token") not in (self.token, self.replaces):
            same_host = old.get("host") == socket.gethostname()
            pid = int(old.get("pid") or 0)
            if not same_host or _alive(pid):
                raise ControlError(self.conflict_message(old.get("host") or "?", pid))
            self.replaces = old.get("token") or ""
            _log.info("work: hub %s restarted (was pid %d): taking its work back", self.hub_id, pid)

    def conflict_message(self, host: str, pid: int) -> str:
        return (
            f"hub id {self.hub_id!r} is live in Redis (pid {pid} on {host}, lease "
            f"{self.lease:g} s); this hub (pid {os.getpid()} on {socket.gethostname()}) "
            "takes no work under it: stop the other, wait out its lease, or pick another "
            "--hub-id"
        )

    def fields(self, agents: dict[str, int], types: set[str]) -> dict[str, Any]:
        """What ``status --cluster`` shows of this hub (read in trio's thread)."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "lease_ms": int(self.lease * 1000),
            "agents": json.dumps(agents, sort_keys=True),
            "types": json.dumps(sorted(types)),
        }

    def first_beat(self, client: redis.Redis, fields: dict[str, Any]) -> None:
        """The first claim of the hub id (in a worker thread)."""
        flat = [x for kv in fields.items() for x in kv]
        lease_ms = int(self.lease * 1000)
        reply = client.eval(_HUB, 1, self.key(), self.token, self.replaces, lease_ms, *flat)
        if not int(reply[0]):
            raise ControlError(self.conflict_message(_text(reply[1]), int(reply[2] or 0)))
        self.claimed = True
        client.zadd(self.hubs_key, {self.hub_id: time.time()})

    def add_beat(self, pipe: Any, fields: dict[str, Any]) -> int:
        """The heartbeat's commands, to a round's pipeline; returns how many."""
        flat = [x for kv in fields.items() for x in kv]
        lease_ms = int(self.lease * 1000)
        pipe.evalsha(_SHA[_HUB], 1, self.key(), self.token, self.replaces, lease_ms, *flat)
        pipe.zadd(self.hubs_key, {self.hub_id: time.time()})
        types = json.loads(fields["types"])
        for agent_type in types:
            pipe.sadd(f"{self.prefix}:work:types", agent_type)
        # Every type a hub sharing this Redis has announced: what a submit may name.
        pipe.smembers(f"{self.prefix}:work:types")
        return 3 + len(types)

    def add_goodbye(self, pipe: Any) -> None:
        """Give the hub id up (a stop): the last commands of the final flush."""
        pipe.execute_command("EVAL", _UNHUB, 1, self.key(), self.token)
        pipe.zrem(self.hubs_key, self.hub_id)

    def on_reply(self, reply: Any) -> None:
        """The hub key's answer: this incarnation holds the hub id, or who does."""
        if isinstance(reply, Exception):
            _log.warning("work: Redis refused the hub's heartbeat: %s", reply)
            return
        if int(reply[0]):
            self.claimed = True
            return
        host, pid, token = _text(reply[1]), int(reply[2] or 0), _text(reply[3])
        self.claimed = False
        if host == socket.gethostname() and pid != os.getpid() and not _alive(pid):
            _log.info("work: hub %s restarted (was pid %d): taking its work back", self.hub_id, pid)
            self.replaces = token
            return
        self.conflict = ServiceFailed(self.conflict_message(host, pid))
