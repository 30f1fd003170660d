"""The link to Redis shared by the registry mirror and the work store.

One place for what both need from redis-py's *sync* client, called from trio:

* :func:`make_client`: a client from a ``redis://``/``rediss://``/``unix://`` URL (auth
  and TLS in the URL) or a ``redis+sentinel://`` one (Sentinels and a master's name),
  with socket timeouts and no retries of its own (the caller retries, with
  :class:`Backoff`), refused with the caller's error when the URL is bad;
* :func:`redact_url`, :func:`clean_error`: URLs and errors without the password, for
  logs and messages; :func:`config_problem`: the fix, when Redis refuses the
  credentials or the database (that never heals by waiting, so it is no outage);
* :class:`Outage` and :class:`Backoff`: one warning per outage, exponential waits
  between retries while it lasts;
* :func:`in_thread`: the executor; every blocking call runs in a worker thread, never
  on the trio thread.

redis-py is imported here only inside functions: a hub without Redis never pays for it.
"""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

if TYPE_CHECKING:
    import redis

__all__ = [
    "Backoff",
    "Outage",
    "clean_error",
    "config_problem",
    "in_thread",
    "make_client",
    "redact_url",
]

T = TypeVar("T")


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    # the hosts as written (several, comma-separated, in a redis+sentinel:// URL)
    netloc = f"{user}:***@{parts.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def clean_error(exc: BaseException, url: str) -> str:
    """The text of ``exc`` (its type when it has none) without ``url``'s password."""
    text = str(exc) or type(exc).__name__
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
        text = text.replace(urllib.parse.unquote(password), "***")
    return text.replace(url, redact_url(url))


def make_client(
    url: str,
    *,
    timeout: float,
    connections: int,
    client_name: str,
    error: type[Exception],
    **options: Any,
) -> redis.Redis:
    """A redis-py client for ``url``: ``timeout`` seconds to connect and per reply, at
    most ``connections`` connections (opened lazily, in the worker thread that first
    uses one), no retries of its own.

    Raises:
        error: the URL is bad (the message shows it without its password).
    """
    if url.startswith(("redis+cluster://", "rediss+cluster://")):  # a Redis Cluster
        from ._redis_cluster import cluster_client

        return cluster_client(
            url, timeout=timeout, connections=connections, client_name=client_name,
            error=error, **options,
        )  # fmt: skip
    import redis  # here, not at the top: a hub without --redis never pays its import
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if url.startswith("redis+sentinel://"):  # Sentinels and the master's name (issue 23)
        return _sentinel_client(url, timeout, connections, client_name, error, options)
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=connections,
            retry=Retry(NoBackoff(), 0),
            client_name=client_name,
            **options,
        )
    except (ValueError, redis.RedisError) as exc:
        raise error(
            f"bad Redis URL {redact_url(url)}: {clean_error(exc, url)}; "
            "e.g. redis://localhost:6379/0"
        ) from None


def _sentinel_client(
    url: str,
    timeout: float,
    connections: int,
    client_name: str,
    error: type[Exception],
    options: dict[str, Any],
) -> redis.Redis:
    """make_client for a ``redis+sentinel://`` URL (see :mod:`._redis_sentinel`)."""
    from ._redis_sentinel import EXAMPLE, sentinel_client

    try:
        return sentinel_client(
            url, timeout=timeout, connections=connections, client_name=client_name, **options
        )
    except ValueError as exc:
        raise error(
            f"bad Redis Sentinel URL {redact_url(url)}: {clean_error(exc, url)}; e.g. {EXAMPLE}"
        ) from None


def config_problem(exc: BaseException, url: str) -> str | None:
    """The fix, when Redis refused the credentials or the database of ``url`` (no
    outage: it would never heal by waiting); None for any other error."""
    import redis

    text = clean_error(exc, url)
    shown = redact_url(url)
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        return (
            f"Redis at {shown} refused the credentials ({text}); put the right password in "
            "the URL: redis://:PASSWORD@host:6379/0 (or redis://USER:PASSWORD@... for an "
            "ACL user)"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return (
            f"the Redis user of {shown} may not run the work queue's commands ({text}); "
            "grant it the stream, hash and scripting commands (e.g. ACL SETUSER ... +@all "
            "~PREFIX:*)"
        )
    if isinstance(exc, redis.ResponseError) and "DB index" in text:
        return f"Redis at {shown} has no such database ({text}); pick one it has, e.g. /0"
    return None


@attrs.define
class Backoff:
    """Waits between retries while Redis fails: each twice the last, from ``first`` up
    to ``cap`` seconds; with ``jitter``, each is cut by up to half at random (so hubs
    that lost one server do not come back in step)."""

    first: float
    cap: float
    jitter: bool = False
    delay: float = 0.0

    def next(self) -> float:
        """The wait before the next retry."""
        self.delay = min(self.cap, max(self.first, self.delay * 2))
        return self.delay * (0.5 + random.random() / 2) if self.jitter else self.delay

    def reset(self) -> None:
        """Redis answered: the next failure starts again at ``first``."""
        self.delay = 0.0


@attrs.define
class Outage:
    """Whether Redis is unreachable now, since when, and how many times it was: the
    caller logs one warning when :meth:`down` says the outage begins, one when
    :meth:`up` says it ended."""

    since: float | None = None
    count: int = 0

    @property
    def active(self) -> bool:
        return self.since is not None

    def down(self, now: float) -> bool:
        """A call failed; True when this begins an outage."""
        if self.since is not None:
            return False
        self.since = now
        self.count += 1
        return True

    def up(self, now: float) -> float | None:
        """A call succeeded; how long the outage it ends lasted (None: there was none)."""
        if self.since is None:
            return None
        lasted, self.since = now - self.since, None
        return lasted


async def in_thread(fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
    """Run the blocking ``fn(*args)`` (redis-py calls) in a worker thread.

    With ``abandon_on_cancel`` a cancel returns at once and leaves the thread to finish
    (the caller closes the client under it); otherwise a cancel waits for the call.
    """
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=abandon_on_cancel)
