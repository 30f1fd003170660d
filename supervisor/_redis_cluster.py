"""Redis Cluster as the Redis of the work store and the registry mirror.

A ``redis+cluster://[[user]:password@]host:port[,host:port...][/0]`` URL names seed
nodes of a Cluster (any of its nodes; the client learns the others and the slots from
them). :func:`cluster_client` builds redis-py's ``RedisCluster`` for it, lazily: the
first call (in the worker thread that makes it) reads the topology, so a Cluster that is
down at start is an outage like a single server's, not a crash. The keys of one agent
type share the hash tag ``{type}``, so every script and every round's writes of a type
go to the one master that serves its slot; a round's writes of several types are split
by redis-py's cluster pipeline over their masters (no transaction across them).
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

__all__ = [
    "SCHEMES",
    "cluster_client",
    "cluster_seeds",
    "cluster_url",
    "is_cluster",
    "masters_of",
    "wait_masters",
]

SCHEMES = ("redis+cluster://", "rediss+cluster://")
"""URL schemes of a Redis Cluster (``rediss+``: TLS)."""

_QUERY = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The seed nodes of a ``redis+cluster://`` URL and its connection options.

    Raises:
        ValueError: the URL is not one (the message says why, without the password).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or f"{scheme}://" not in SCHEMES:
        raise ValueError("a Redis Cluster URL starts with redis+cluster:// (rediss+cluster://)")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    auth, at, hosts = netloc.rpartition("@")
    options: dict[str, Any] = {}
    if at:
        user, colon, password = auth.partition(":")
        if user:
            options["username"] = urllib.parse.unquote(user)
        if colon:
            options["password"] = urllib.parse.unquote(password)
    if path.strip("/") not in ("", "0"):
        raise ValueError(
            f"Redis Cluster has database 0 only (the URL names /{path.strip('/')}); drop it "
            "or use a key prefix (--redis-prefix) to keep hubs apart"
        )
    seeds = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        if not colon:
            host, port = port, "6379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"seed node {part!r} is not host:port")
        seeds.append((host, int(port)))
    for name, values in urllib.parse.parse_qs(query, keep_blank_values=True).items():
        if name not in _QUERY:
            raise ValueError(f"unknown option {name!r} (known: {', '.join(sorted(_QUERY))})")
        options[name] = values[-1]
    if scheme == "rediss+cluster":
        options["ssl"] = True
    return seeds, options


def cluster_url(value: str) -> str:
    """``--redis-cluster``'s value as a ``redis+cluster://`` URL: seed nodes as
    ``host:port[,host:port]``, or a ``redis://`` (``rediss://``) URL of them."""
    if value.startswith(SCHEMES):
        url = value
    elif value.startswith(("redis://", "rediss://")):
        scheme, _, rest = value.partition("://")
        url = f"{scheme}+cluster://{rest}"
    else:
        url = f"redis+cluster://{value}"
    cluster_seeds(url)
    return url


def is_cluster(client: Any) -> bool:
    """Whether ``client`` (from :func:`~supervisor._redis_link.make_client`) talks to a
    Redis Cluster."""
    return isinstance(client, LazyCluster)


def cluster_client(
    url: str,
    *,
    timeout: float,
    connections: int,
    client_name: str,
    error: type[Exception],
    **options: Any,
) -> redis.Redis:
    """A ``RedisCluster`` for the seeds of ``url`` (see the module), built on first use:
    ``timeout`` seconds to connect and per reply, at most ``connections`` connections per
    node, no retries of its own (the caller retries; MOVED and ASK are still followed).

    Raises:
        error: the URL is bad (the message shows it without its password).
    """
    from ._redis_link import clean_error, redact_url

    try:
        seeds, url_options = cluster_seeds(url)
    except ValueError as exc:
        raise error(
            f"bad Redis Cluster URL {redact_url(url)}: {clean_error(exc, url)}; e.g. "
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"
        ) from None
    kwargs = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "max_connections": connections,
        "client_name": client_name,
        **url_options,
        **options,
    }
    return LazyCluster(seeds, kwargs, redact_url(url))  # type: ignore[return-value]


@contextlib.contextmanager
def _as_outage(shown: str) -> Iterator[None]:
    """redis-py's cluster errors that are no ``RedisError`` (no node reachable, a slot
    no master serves: a failover under way) as ``redis.ConnectionError``: an outage,
    which the callers ride out with their held writes."""
    import redis
    from redis.exceptions import (
        CrossSlotTransactionError,
        InvalidPipelineStack,
        RedisClusterException,
    )

    try:
        yield
    except (CrossSlotTransactionError, InvalidPipelineStack):
        raise
    except RedisClusterException as exc:
        raise redis.ConnectionError(f"Redis Cluster at {shown}: {exc}") from exc


def _iterate(items: Iterator[Any], shown: str) -> Iterator[Any]:
    with _as_outage(shown):
        yield from items


class _Pipeline:
    """A cluster pipeline whose ``execute`` raises an outage as ``ConnectionError``."""

    def __init__(self, pipe: Any, shown: str, client: RedisCluster) -> None:
        self._pipe = pipe
        self._shown = shown
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        with _as_outage(self._shown):
            return list(self._pipe.execute(raise_on_error=raise_on_error))

    def execute_by_node(self, raise_on_error: bool = False) -> list[Any]:
        """``execute(raise_on_error=False)`` (the only kind), except that a node that
        cannot take commands (a master that died, its slots not yet promoted; CLUSTERDOWN)
        holds back only its own: each of their replies is a ``redis.ConnectionError``.
        The whole pipeline goes first (each node's part at once, as ``execute``); when
        that raises an outage, each node's part again on its own. Raises the outage when
        no command was taken, and when that split found every node answering (the whole
        try may have run in part: a node that failed while its reply was read). A caller
        handles a round with unanswered parts as one whose first try may have run: every
        write is safe to run twice, and what a lost reply took is read back."""
        import redis

        down = _down_errors()
        queued = self._pipe._execution_strategy.command_queue  # redis-py's, before it runs
        stack = [(tuple(c.args), dict(c.options)) for c in queued]
        try:
            whole = self.execute(raise_on_error=False)
        except down as exc:
            if len(stack) == 0:
                raise
            outage = exc
        else:  # CLUSTERDOWN and TRYAGAIN come back as replies: no node took them
            return _settled(whole, down, None)
        groups: dict[str, list[int]] = {}
        for n, (args, _options) in enumerate(stack):
            groups.setdefault(_node_of(self._client, args), []).append(n)
        replies: list[Any] = [None] * len(stack)
        for node, positions in groups.items():
            sub = self._client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
            part = _Pipeline(sub, self._shown, self._client)
            for n in positions:
                part.execute_command(*stack[n][0], **stack[n][1])
            try:
                got = part.execute(raise_on_error=False)
            except down as exc:
                got = [redis.ConnectionError(f"Redis Cluster node {node}: {exc}")] * len(positions)
            for n, reply in zip(positions, got, strict=True):
                replies[n] = reply
        replies = _settled(replies, down, outage)
        if not any(isinstance(r, redis.ConnectionError | redis.TimeoutError) for r in replies):
            raise outage  # every node answered this time: the split round is an outage
        return replies


def _settled(
    replies: list[Any], down: tuple[type[Exception], ...], outage: Exception | None
) -> list[Any]:
    """``replies`` with every "cannot take it now" reply as a ``redis.ConnectionError``;
    raises ``outage`` (or the first such reply) when no command was taken."""
    settled = [_unanswered(r) if isinstance(r, down) else r for r in replies]
    if settled and all(isinstance(r, down) for r in settled):
        raise outage or settled[0]
    return settled


def _unanswered(error: Exception) -> Exception:
    """A reply that says its node cannot take it now, as a ``redis.ConnectionError``."""
    import redis

    if isinstance(error, redis.ConnectionError | redis.TimeoutError):
        return error
    return redis.ConnectionError(str(error))


def _node_of(client: RedisCluster, args: tuple[Any, ...]) -> str:
    """The node that serves the keys of a command, as the client sees it now."""
    try:
        slot = client.determine_slot(*args)
        assert slot is not None
        return str(client.nodes_manager.get_node_from_slot(slot).name)
    except Exception:  # no node known for it: one group of its own
        return "?"


def _down_errors() -> tuple[type[Exception], ...]:
    """Errors that say a node cannot take commands now (down, a failover under way)."""
    import redis
    from redis.exceptions import ClusterDownError, TryAgainError

    return (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError)


class LazyCluster:
    """A ``RedisCluster`` made when first used (from a worker thread): reading the
    topology talks to the seeds, which never happens on the trio thread nor at start.
    A Cluster no seed of which answers raises ``redis.ConnectionError`` (an outage)."""

    def __init__(self, seeds: list[tuple[str, int]], kwargs: dict[str, Any], shown: str):
        self.seeds = seeds
        self.kwargs = kwargs
        self.shown = shown
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def get(self) -> RedisCluster:
        """The client (made now if it was not)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.cluster import ClusterNode, RedisCluster
        from redis.exceptions import RedisClusterException
        from redis.retry import Retry

        with self._lock:
            if self._client is None:
                try:
                    self._client = RedisCluster(
                        startup_nodes=[ClusterNode(h, p) for h, p in self.seeds],  # type: ignore[no-untyped-call]
                        retry=Retry(NoBackoff(), 0),
                        **self.kwargs,
                    )
                except (RedisClusterException, redis.RedisError) as exc:
                    if isinstance(exc, redis.AuthenticationError | redis.ResponseError):
                        raise
                    raise redis.ConnectionError(
                        f"no seed node of the Redis Cluster at {self.shown} answered ({exc})"
                    ) from None
            return self._client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.get(), name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with _as_outage(self.shown):
                result = attr(*args, **kwargs)
            if name == "pipeline":
                return _Pipeline(result, self.shown, self.get())
            if isinstance(result, Iterator) and name.endswith("_iter"):
                return _iterate(result, self.shown)
            return result

        return call

    @property
    def connection_pool(self) -> redis.ConnectionPool:
        """A pool never connected, for packing commands (the store's poison check)."""
        import redis

        keep = ("encoding", "encoding_errors")
        return redis.ConnectionPool(**{k: v for k, v in self.kwargs.items() if k in keep})

    def close(self) -> None:
        """Close the client's connections (never waits for one being made)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


# --- WAIT on a Cluster (--redis-replicas, issue 23) ---


def masters_of(client: Any, marks: list[str | None]) -> list[str | None]:
    """The master that serves each of ``marks`` as the client sees it now (None: no
    mark, or no master known): :func:`wait_masters` compares them after the round."""
    from redis.crc import key_slot

    cluster = client.get() if isinstance(client, LazyCluster) else client
    names: list[str | None] = []
    for mark in marks:
        try:
            assert mark is not None
            node = cluster.nodes_manager.get_node_from_slot(key_slot(mark.encode()))
            names.append(str(node.name))
        except Exception:  # no mark, or no master known for it now
            names.append(None)
    return names


def wait_masters(
    client: Any,
    marks: list[str | None],
    replicas: int,
    ms: int,
    before: list[str | None] | None = None,
) -> dict[int, str]:
    """``WAIT replicas ms`` on each master that serves one of ``marks`` (per write of a
    round, a key of its slot that the store may set; None: a write not to ask for), one
    master after another. WAIT has no key (sent to the Cluster it would ask other nodes)
    and counts the replicas that have the last write *of its own connection*, so on each
    master it goes in one pipeline after a ``SET mark`` of its own, on that master's
    connection: it confirms everything that master wrote before, the round's writes
    with it. A master that no longer serves the mark's slot (MOVED) confirms nothing.
    ``before``: the masters of ``marks`` before the round (:func:`masters_of`); a write
    whose slot moved since (a MOVED in the round) may have gone to the old master, so it
    is not confirmed. Returns the positions whose master confirmed fewer than
    ``replicas`` (or did not answer, or moved), each with why; empty when all confirmed."""
    import redis
    from redis.crc import key_slot
    from redis.exceptions import RedisClusterException

    cluster = client.get() if isinstance(client, LazyCluster) else client
    short: dict[int, str] = {}
    groups: dict[str, tuple[Any, str, list[int]]] = {}
    for n, mark in enumerate(marks):
        if mark is None:
            continue
        try:
            node = cluster.nodes_manager.get_node_from_slot(key_slot(mark.encode()))
        except (RedisClusterException, redis.RedisError) as exc:  # no master known now
            short[n] = f"no master known for {mark!r} to WAIT on ({exc})"
            continue
        if before is not None and before[n] != node.name:
            short[n] = f"the slot of {mark!r} moved from {before[n]} to {node.name} in the round"
            continue
        groups.setdefault(node.name, (node, mark, []))[2].append(n)
    for name, (node, mark, positions) in groups.items():
        try:
            pipe = cluster.get_redis_connection(node).pipeline(transaction=False)
            pipe.set(mark, 1, px=max(ms, 1000) * 10)
            pipe.execute_command("WAIT", replicas, ms)
            written, got = pipe.execute(raise_on_error=False)
            if isinstance(written, Exception):  # MOVED: WAIT would count an older write
                got = written
        except (RedisClusterException, redis.RedisError) as exc:
            got = exc
        if isinstance(got, int) and got >= replicas:
            continue
        shown = got if isinstance(got, int) else f"an error ({type(got).__name__}: {got})"
        why = f"WAIT on {name} confirmed {shown} of {replicas} replica(s) in {ms / 1000:g} s"
        short.update((n, why) for n in positions)
    return short


# --- the CLI's --redis-cluster (here, not in _cli.py, which is at its size limit) ---


def cluster_option() -> Callable[[Any], Any]:
    """``--redis-cluster SEEDS`` of ``hubvisor run`` and ``demo``: checked, made a
    ``redis+cluster://`` URL (:func:`fold_cluster_option` makes it the ``--redis``)."""
    import click

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = cluster_url(value)
            from ._registry_redis import RedisMirror  # the mirror's checks too

            RedisMirror(url)
        except ValueError as exc:  # the message never shows the password
            raise click.BadParameter(str(exc), param_hint="--redis-cluster") from None
        return url

    return click.option(
        "--redis-cluster",
        metavar="SEEDS",
        envvar="HUBVISOR_REDIS_CLUSTER",
        default=None,
        callback=check,
        help="As --redis, on a Redis Cluster: SEEDS name some of its nodes, "
        "host:port[,host:port] or redis://[:password@]host:port[,host:port] (rediss:// "
        "for TLS); the hub finds the others. Also $HUBVISOR_REDIS_CLUSTER.",
    )


def fold_cluster_option(options: dict[str, Any]) -> None:
    """``--redis-cluster SEEDS`` is ``--redis redis+cluster://SEEDS``; never both."""
    import click

    url = options.pop("redis_cluster", None)
    if url is not None:
        if options.get("redis") is not None:
            raise click.UsageError("--redis-cluster and --redis name two Redis: give one")
        options["redis"] = url


# --- what ``status --cluster`` shows of a Cluster ---


def topology(client: Any, types: list[str]) -> dict[str, Any] | None:
    """The Cluster's nodes as one of them reports them (address, role, master, slots,
    state) and each type's slot and master; None when ``client`` is no Cluster's."""
    if not is_cluster(client):
        return None
    from redis.crc import key_slot

    nodes = client.cluster_nodes()
    by_id = {n["node_id"]: addr for addr, n in nodes.items()}
    shown: list[dict[str, Any]] = []
    owner: list[tuple[int, int, str]] = []
    for addr, n in sorted(nodes.items()):
        flags = set(str(n["flags"]).split(","))
        master = "master" in flags
        ranges = [(int(r[0]), int(r[-1])) for r in n.get("slots") or [] if str(r[0]).isdigit()]
        owner += [(lo, hi, addr) for lo, hi in ranges] if master else []
        shown.append(
            {
                "address": addr,
                "role": "master" if master else "replica",
                "master": None if master else by_id.get(n.get("master_id")),
                "slots": ",".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in ranges),
                "state": "fail" if flags & {"fail", "fail?"} or not n.get("connected") else "ok",
            }
        )
    where = {}
    for agent_type in types:
        slot = key_slot(agent_type.encode())
        serves = next((a for lo, hi, a in owner if lo <= slot <= hi), None)
        where[agent_type] = {"slot": slot, "master": serves}
    return {"nodes": shown, "types": where}
