"""One script call per agent type per round (issue 24).

The store's round is built as before, command by command (``StoreActor._fill``: the held
writes, the renewals, the proofs of life, the lag, the checks and the takes, each script
call with its own keys and arguments); :class:`Batcher` records it, then sends every
script call on one type's keys as one call of :data:`_BATCH`, which runs them in order,
each as its own script would, and answers each one (:meth:`Batcher.replies` gives them
back in the round's own layout, so everything after reads the round as before). Every key
of a type shares the hash tag ``{T}``: one batch is one slot on Redis Cluster.

What stays as it was: the order of one type's calls (a call that cannot be batched, a
``HGET`` check of an item, ends the type's batch and a new one follows it); a call that
fails answers its own error, the others run (as in a pipeline); an error that says the
server takes no writes now (``READONLY``, ``OOM``, ``LOADING``, ...) is the reply of the
whole batch, so the round is held and sent again as before (every write is safe to run
twice). A call with an argument JSON cannot carry exactly (bytes) is sent on its own.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from typing import Any

import redis

from ._deps import _DROP, _LINK, _NOTIFY, _SETTLE, _SUBMIT_AFTER
from ._scripts import _BEAT, _CLAIM, _FENCED, _LAG, _RETRY, _SHA, _SUBMIT, _TAKE
from ._tiers import _TIERS

__all__ = ["BATCHED", "Batcher"]

BATCHED = (
    _SUBMIT, _SUBMIT_AFTER, _FENCED, _RETRY, _LINK, _NOTIFY, _SETTLE, _DROP, _BEAT, _LAG,
    _TAKE, _CLAIM,
)  # fmt: skip
"""The scripts a batch runs (by their index, from 1): each as a function of its own
``KEYS`` and ``ARGV``."""

# Errors after which nothing of the batch is answered one by one: the server takes no
# writes now, so the whole call is refused with the error, as each call would have been.
_FATAL = (
    "READONLY", "OOM", "LOADING", "BUSY", "MASTERDOWN", "MISCONF", "NOREPLICAS", "CLUSTERDOWN",
    "TRYAGAIN", "MOVED", "ASK", "NOSCRIPT", "NOPERM", "NOAUTH", "CROSSSLOT",
)  # fmt: skip

# The scripts that begin with the streams' helpers (_tiers.py), which derive every key
# from KEYS[1], the type's stream: in a batch (KEYS[1] that same stream) the helpers are
# made once, and a call whose KEYS[1] is the batch's runs its script's body alone, as
# script HOISTED + n (about 5 us of the server's per call).
HOISTED = 100
_BODIES = {n: s[len(_TIERS) :] for n, s in enumerate(BATCHED, 1) if s.startswith(_TIERS)}

# KEYS[1]: the type's stream (its slot). ARGV[1]: JSON list of calls, each
# [script index, [keys], [args]] (every argument a string). Returns {replies, errors}:
# a reply per call (false where it erred or answered nothing), and the calls that
# erred as index, message pairs.
_BATCH = (
    "local F = {}\n"
    + "".join(
        f"F[{n}] = function(KEYS, ARGV)\n{script}\nend\n" for n, script in enumerate(BATCHED, 1)
    )
    + _TIERS
    + "".join(
        f"F[{HOISTED + n}] = function(KEYS, ARGV)\n{body}\nend\n" for n, body in _BODIES.items()
    )
    + "local FATAL = {"
    + ", ".join(f"{code}=true" for code in _FATAL)
    + "}\n"
    + r"""
local out, errs = {}, {}
for i, call in ipairs(cjson.decode(ARGV[1])) do
  local ok, r = pcall(F[call[1]], call[2], call[3])
  if not ok then
    if type(r) == 'table' then r = r.err or 'error' end
    r = tostring(r)
    if FATAL[string.match(r, '^(%u+)[ ]') or ''] then return redis.error_reply(r) end
    table.insert(errs, i); table.insert(errs, r)
    r = false
  elseif r == nil then
    r = false
  end
  out[i] = r
end
return {out, errs}
"""
)
_SHA[_BATCH] = hashlib.sha1(_BATCH.encode()).hexdigest()
_INDEX = {_SHA[script]: n for n, script in enumerate(BATCHED, 1)}


def _escape_surrogate(exc: UnicodeError) -> tuple[str, int]:
    """A lone surrogate in the JSON text, written as redis-py writes it in an argument
    (``backslashreplace``: the six characters ``\\udcff``), escaped for JSON."""
    assert isinstance(exc, UnicodeEncodeError)
    bad = exc.object[exc.start : exc.end]
    return "".join(f"\\\\u{ord(c):04x}" for c in bad), exc.end


codecs.register_error("hubvisor-json-surrogate", _escape_surrogate)


class _Unbatchable(Exception):
    """An argument JSON cannot carry as redis-py would send it."""


def _arg(value: Any) -> str:
    """An argument as redis-py's encoder writes it (str as is, int and float by repr)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    raise _Unbatchable(type(value).__name__)


class Batcher:
    """Records a round's commands as a pipeline would take them, then sends them with
    each type's script calls as one (:meth:`send`) and answers them in the recorded
    order (:meth:`replies`)."""

    def __init__(self, prefix: str) -> None:
        self._tag = f"{prefix}:work:{{"
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._sent: list[tuple[int, ...]] = []  # per command sent, the calls it answers
        self.batches = 0  # calls of the batch script sent (tests, benchmarks)

    def evalsha(self, sha: str, numkeys: int, *rest: Any) -> None:
        self.calls.append(("evalsha", (sha, numkeys, *rest), {}))

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))

        return record

    def _type(self, name: str, args: tuple[Any, ...]) -> str | None:
        """The agent type whose slot a command acts in (None: not a type's key)."""
        key = args[2] if name == "evalsha" and args[1] else args[0] if args else None
        if not isinstance(key, str) or not key.startswith(self._tag):
            return None
        return key[len(self._tag) :].partition("}")[0]

    def send(self, pipe: Any) -> None:
        """Put the recorded commands on ``pipe``: one batch per run of a type's script
        calls, in the place of its first; every other command in its own place."""
        groups: list[tuple[str | None, list[int], list[Any]]] = []
        open_: dict[str, int] = {}  # type -> its batch being filled
        for n, (name, args, _kwargs) in enumerate(self.calls):
            agent_type = self._type(name, args)
            entry = self._entry(name, args, agent_type) if agent_type is not None else None
            if entry is None or agent_type is None:
                if agent_type is not None:  # the type's later calls go after this one
                    open_.pop(agent_type, None)
                groups.append((None, [n], []))
            elif agent_type in open_:
                group = groups[open_[agent_type]]
                group[1].append(n)
                group[2].append(entry)
            else:
                open_[agent_type] = len(groups)
                groups.append((agent_type, [n], [entry]))
        for agent_type, positions, entries in groups:
            self._sent.append(tuple(positions))
            if agent_type is None or len(positions) == 1:  # as it was recorded
                name, args, kwargs = self.calls[positions[0]]
                getattr(pipe, name)(*args, **kwargs)
                continue
            text = json.dumps(entries, ensure_ascii=False, check_circular=False)
            key = f"{self._tag}{agent_type}}}:q"
            self.batches += 1
            pipe.evalsha(_SHA[_BATCH], 1, key, text.encode("utf-8", "hubvisor-json-surrogate"))

    def _entry(self, name: str, args: tuple[Any, ...], agent_type: str) -> list[Any] | None:
        """A script call as a batch entry (None: sent on its own)."""
        if name != "evalsha" or args[0] not in _INDEX:
            return None
        numkeys, n = int(args[1]), _INDEX[args[0]]
        if n in _BODIES and args[2] == f"{self._tag}{agent_type}}}:q":  # the batch's KEYS[1]
            n += HOISTED
        try:
            return [
                n,
                [k if type(k) is str else _arg(k) for k in args[2 : 2 + numkeys]],
                [a if type(a) is str else _arg(a) for a in args[2 + numkeys :]],
            ]
        except _Unbatchable:
            return None

    def replies(self, got: list[Any]) -> list[Any]:
        """The replies of the recorded commands, in their order, from those of the sent
        ones (``got``; what follows them, a ``WAIT``, is kept at the end)."""
        out: list[Any] = [None] * len(self.calls)
        for positions, reply in zip(self._sent, got, strict=False):
            if len(positions) == 1:
                out[positions[0]] = reply
            elif isinstance(reply, Exception):  # the whole batch: each call's answer
                for n in positions:
                    out[n] = reply
            else:
                for n, one in zip(positions, _split(reply, len(positions)), strict=True):
                    out[n] = one
        return out + list(got[len(self._sent) :])


def _split(reply: Any, count: int) -> list[Any]:
    """The per-call replies of a batch's reply ``{replies, errors}``."""
    if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], list)):
        raise RuntimeError(f"the batch script answered {reply!r:.200}, not its replies")
    replies = list(reply[0]) + [None] * (count - len(reply[0]))  # nil ends a Lua array
    errors = reply[1]
    for at in range(0, len(errors), 2):
        message = errors[at + 1]
        text = message.decode(errors="backslashreplace") if isinstance(message, bytes) else message
        replies[int(errors[at]) - 1] = redis.ResponseError(str(text))
    if len(replies) != count:
        raise RuntimeError(f"the batch script answered {len(replies)} calls of {count}")
    return replies
