"""Durable work on Redis Streams, shared by several hubs (see ``docs/work-redis.md``).

* :mod:`._scripts`: the Lua scripts, each atomic and fenced by (hub id, token);
* :mod:`._queue`: :class:`RedisWorkQueue`, the queue operations (decided locally, written
  behind) and the queries of the control ops;
* :mod:`._store`, :mod:`._outbox`, :mod:`._claim`: the store's actor (rounds, leases,
  heartbeat), the writes it holds, and the hub's claim of its id;
* :mod:`._admin`: work in Redis without a hub (``enqueue``, ``cluster_status``).

Importing this package imports redis-py (``hubvisor[redis]``; without it the import
raises :class:`~supervisor._extras.MissingExtra` naming the extra).
"""

try:
    from ._admin import (
        cluster_status as cluster_status,
        enqueue as enqueue,
        persistence_warning as persistence_warning,
    )
    from ._queue import RedisWorkQueue as RedisWorkQueue
except ImportError as exc:  # installed without hubvisor[redis]: say so
    from ..._extras import explain

    explain("redis", exc)
    raise

__all__ = ["RedisWorkQueue", "cluster_status", "enqueue", "persistence_warning"]
