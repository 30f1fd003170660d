"""Redis behind Sentinel: ``redis+sentinel://[[user]:password@]host:port[,host:port]/MASTER[/db]``.

The URL names the Sentinels and the monitored master's name; the client is redis-py's
``Sentinel(...).master_for(MASTER)``: each new connection asks the Sentinels where the
master is, so after a failover (the old master down, a replica promoted) the next
connection reaches the new master. The credentials in the URL are the master's (the
Sentinels are asked without them); the database defaults to 0.

``hubvisor run --redis-sentinel MASTER --redis redis://S1:26379,redis://S2:26379`` builds
that URL with :func:`sentinel_url`.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import redis

SCHEME = "redis+sentinel"
EXAMPLE = "redis+sentinel://10.0.0.5:26379,10.0.0.6:26379/mymaster/0"

__all__ = [
    "CLI_OPTION",
    "REPLICAS_OPTION",
    "SCHEME",
    "parse",
    "sentinel_client",
    "sentinel_master",
    "sentinel_url",
    "with_sentinel",
]


def parse(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, str | None]:
    """The Sentinels' addresses, the master's name, the database, the user and the
    password of a ``redis+sentinel://`` URL.

    Raises:
        ValueError: it is not one (the message shows the expected form).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != SCHEME:
        raise ValueError(f"not a {SCHEME}:// URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":")
        name = name.strip("[]")
        if not name or not port.isdigit():
            raise ValueError(f"a Sentinel must be host:port (got {host!r})")
        sentinels.append((name, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("the path must be /MASTER or /MASTER/DB (the monitored master's name)")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"the database must be a number (got {path[1]!r})")
    db = int(path[1]) if len(path) == 2 else 0
    unquote = urllib.parse.unquote
    return (
        sentinels,
        unquote(path[0]),
        db,
        unquote(user) or None,
        unquote(password) if userinfo and ":" in userinfo else None,
    )


def sentinel_client(
    url: str, *, timeout: float, connections: int, client_name: str, **options: Any
) -> redis.Redis:
    """A client of the master that the Sentinels of ``url`` name (see the module); the
    Sentinels are asked with the same ``timeout``. ``options`` go to the master's
    connections.

    Raises:
        ValueError: the URL is bad.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    sentinels, master, db, user, password = parse(url)
    manager = Sentinel(
        sentinels,
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
        },
    )

    class SentinelRedis(redis.Redis):
        """The master's client; closing it closes the Sentinels' connections too."""

        def close(self) -> None:
            try:
                super().close()
            finally:
                manager.close()

    client: redis.Redis = manager.master_for(
        master,
        redis_class=SentinelRedis,
        db=db,
        username=user,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=connections,
        retry=Retry(NoBackoff(), 0),
        client_name=client_name,
        **options,
    )
    return client


def sentinel_url(master: str, urls: str) -> str:
    """The ``redis+sentinel://`` URL for ``--redis-sentinel MASTER --redis URL[,URL]``:
    ``urls`` name the Sentinels (``redis://host:port``, or ``host:port``); the first
    one's credentials and database are the master's.

    Raises:
        ValueError: a URL is not ``redis://host:port`` (the message says which).
    """
    if not master or any(c in master for c in "/@, "):
        raise ValueError(
            f"--redis-sentinel takes the master's name, e.g. mymaster (got {master!r})"
        )
    hosts, auth, db = [], "", ""
    for i, raw in enumerate(u.strip() for u in urls.split(",")):
        text = raw if "://" in raw else f"redis://{raw}"
        parts = urllib.parse.urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "redis" or not parts.hostname or port is None:
            raise ValueError(
                f"with --redis-sentinel, --redis names the Sentinels as redis://host:port "
                f"(comma-separated); got {_shown(raw)}"
            )
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        hosts.append(f"{host}:{port}")
        if i == 0:
            userinfo = parts.netloc.rpartition("@")[0]
            auth = f"{userinfo}@" if userinfo else ""
            db = parts.path.strip("/")
    return f"{SCHEME}://{auth}{','.join(hosts)}/{urllib.parse.quote(master)}" + (
        f"/{db}" if db else ""
    )


def _shown(url: str) -> str:
    from ._redis_link import redact_url

    return redact_url(url)


CLI_OPTION = click.option(
    "--redis-sentinel",
    metavar="MASTER",
    envvar="HUBVISOR_REDIS_SENTINEL",
    default=None,
    help="Reach Redis through Sentinel: MASTER is the monitored master's name and "
    "--redis names the Sentinels (redis://host:26379[,redis://host:26379...]; the "
    "first one's password and database are the master's). The hub writes to whichever "
    "server the Sentinels name master, and follows a failover. Also "
    "$HUBVISOR_REDIS_SENTINEL.",
)
"""``hubvisor run``'s ``--redis-sentinel MASTER`` (with the common options)."""

REPLICAS_OPTION = click.option(
    "--redis-replicas",
    metavar="N",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="With --redis: a submit's answer, a result and a dead letter count as written "
    "only once WAIT N confirmed that N replicas have them (held and sent again until "
    "then, as in an outage), so a failover loses nothing the hub said is stored.",
)
"""``hubvisor run``'s ``--redis-replicas N``."""


def with_sentinel(options: dict[str, Any]) -> None:
    """``--redis-sentinel MASTER --redis URL[,URL]`` -> ``--redis redis+sentinel://...``
    (in ``options``, the CLI's parsed options)."""
    master = options.pop("redis_sentinel", None)
    if master is None:
        return
    if options.get("redis") is None:
        raise click.UsageError(
            "--redis-sentinel MASTER needs --redis naming the Sentinels, e.g. --redis "
            "redis://10.0.0.5:26379,redis://10.0.0.6:26379"
        )
    try:
        options["redis"] = sentinel_url(master, options["redis"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--redis-sentinel") from None


def sentinel_master(client: Any) -> dict[str, Any] | None:
    """Behind Sentinel, the master this client writes to as the Sentinels name it now
    (``status --cluster``): ``{"sentinel": {"service": NAME, "master": "host:port"}}``;
    ``None`` for a client that is not behind Sentinel."""
    pool: Any = getattr(client, "connection_pool", None)
    where = getattr(pool, "get_master_address", None)
    if where is None:
        return None
    host, port = where()
    return {"sentinel": {"service": str(pool.service_name), "master": f"{host}:{port}"}}
