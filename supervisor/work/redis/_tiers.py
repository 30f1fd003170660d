"""Routing to tiers on Redis (issue 21): ``submit --require tier=large`` and
``PoolSpec(labels=...)``, shared by every hub, decided by the take script.

An item's stream is named by its priority *and* its requirement set: ``P:work:{T}:q`` (no
requirement, priority 0), ``P:work:{T}:q:<p>`` (no requirement, priority ``p``) and
``P:work:{T}:q:<p>:<rid>`` (requirement set ``rid``, any priority). ``rid`` is a short
digest of the set's canonical text (its JSON, keys sorted), kept in the hash
``P:work:{T}:reqs`` (rid -> text) so the take script and ``status --cluster`` can read
it; ``P:work:{T}:tiers`` (a sorted set, member ``<p>:<rid>``, score ``p``) lists the
streams of requirement sets in use. All share the hash tag ``{T}``: one slot.

A hub's take for an idle pool reads only the streams whose requirement its pool's labels
satisfy (every label the item requires, with the same value; an item with none goes to
any pool), highest priority first, FIFO within a level across those streams. Each hub
publishes the label sets its pools serve per type (``tiers`` in ``P:work:hub:{H}``, which
expires with the hub), so ``status --cluster`` counts the waiting items no live hub can
serve.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .._deps import _matches
from .._queue import MemoryWorkQueue

__all__ = ["requirement", "served_labels", "tier_demand", "tier_queues"]

# The stream names, the sets of streams in use, and which requirement sets a list of pool
# label sets satisfies. KEYS[1] is always the type's stream of priority 0 (``P:work:{T}:q``).
_TIERS = r"""
local base = string.sub(KEYS[1], 1, -2)
local prios, tiers, reqs = base .. 'prios', base .. 'tiers', base .. 'reqs'
local function stream(pr, rq)  -- the stream of priority pr and requirement set rq
  if (not pr) or pr == '' then pr = '0' end
  if rq and rq ~= '' then return KEYS[1] .. ':' .. pr .. ':' .. rq end
  if pr == '0' then return KEYS[1] end
  return KEYS[1] .. ':' .. pr
end
-- add an item's entry to stream sq; ``n`` (a per-type counter) orders entries across
-- streams, whose ids tie within a millisecond
local function push(sq, iid)
  return redis.call('XADD', sq, '*', 'item', iid, 'n', redis.call('INCR', base .. 'seq'))
end
local function enlist(pr, rq)  -- the stream has entries now
  if (not pr) or pr == '' then pr = '0' end
  if rq and rq ~= '' then redis.call('ZADD', tiers, pr, pr .. ':' .. rq)
  elseif pr ~= '0' then redis.call('ZADD', prios, pr, pr) end
end
-- every stream, highest priority first, the plain one first within a level ({pr, key, rq})
local function levels()
  local lv = {{0, '0', ''}}
  for _, p in ipairs(redis.call('ZRANGE', prios, 0, -1)) do
    table.insert(lv, {tonumber(p), p, ''})
  end
  for _, m in ipairs(redis.call('ZRANGE', tiers, 0, -1)) do
    local i = string.find(m, ':', 1, true)
    local p = string.sub(m, 1, i - 1)
    table.insert(lv, {tonumber(p), p, string.sub(m, i + 1)})
  end
  table.sort(lv, function(a, b)
    if a[1] ~= b[1] then return a[1] > b[1] end
    return a[3] < b[3]
  end)
  local out = {}
  for _, x in ipairs(lv) do table.insert(out, {x[2], stream(x[2], x[3]), x[3]}) end
  return out
end
local function unlist(lv)  -- an emptied stream leaves its set and is deleted
  if lv[3] ~= '' then redis.call('ZREM', tiers, lv[1] .. ':' .. lv[3])
  else redis.call('ZREM', prios, lv[1]) end
  redis.call('DEL', lv[2])
end
-- the requirement sets (rq -> true) one of the label sets in spec (JSON list of objects)
-- satisfies; '' (no requirement) always; spec '*': nil, every set
local function fitting(spec)
  if spec == '*' then return nil end
  local ok = {['']=true}
  if redis.call('EXISTS', tiers) == 0 then return ok end
  local sets = {}
  if spec and spec ~= '' then sets = cjson.decode(spec) end
  local all = redis.call('HGETALL', reqs)
  for i = 1, #all, 2 do
    local need = cjson.decode(all[i + 1])
    for _, labels in ipairs(sets) do
      local fits = true
      for k, v in pairs(need) do if labels[k] ~= v then fits = false; break end end
      if fits then ok[all[i]] = true; break end
    end
  end
  return ok
end
"""

# The take's reading of the streams (after _ADOPT and _DUE): the levels highest first;
# within a level, the streams this hub's pool may read (ARGV[7], see ``fitting``). One
# stream: read at once; several: the oldest head entry among them each time (FIFO within
# the level, as in memory). ARGV[6] '>' new entries, '0' this hub's own pending ones.
_TAKE_LEVELS = r"""
local want, ok = tonumber(ARGV[3]), fitting(ARGV[7])
local function older(a, b)  -- entry a ({id, n}) was added before entry b
  if a[2] and b[2] then return a[2] < b[2] end
  local am, as = string.match(a[1], '(%d+)-(%d+)')
  local bm, bs = string.match(b[1], '(%d+)-(%d+)')
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end
local function after(sq, last)  -- the first entry past id last ({id, n}), or nil
  local r = redis.call('XRANGE', sq, '(' .. last, '+', 'COUNT', 1)
  if not r[1] then return nil end
  local n = nil
  for j = 1, #r[1][2], 2 do if r[1][2][j] == 'n' then n = tonumber(r[1][2][j + 1]) end end
  return {r[1][1], n}
end
local function head(sq)  -- the next entry no hub was given yet, or nil
  local last = '0-0'
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', sq)) do
    local name, ld = nil, nil
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1] end
      if g[j] == 'last-delivered-id' then ld = g[j + 1] end
    end
    if name == 'hubs' then last = ld end
  end
  return after(sq, last)
end
local function read(sq, n)
  local r = redis.call('XREADGROUP', 'GROUP', 'hubs', hub, 'COUNT', n, 'STREAMS', sq, ARGV[6])
  local got = nil
  if r and r[1] then for _, e in ipairs(r[1][2]) do adopt(sq, e[1], e[2]); got = e[1] end end
  return got
end
local all, i = levels(), 1
while i <= #all and #out < want do
  local p, group = all[i][1], {}
  while i <= #all and all[i][1] == p do
    local lv, sq = all[i], all[i][2]
    i = i + 1
    if sq ~= q and redis.call('XLEN', sq) == 0 then unlist(lv)
    elseif (ok == nil or ok[lv[3]]) and redis.call('EXISTS', sq) == 1 then
      if sq ~= q then redis.pcall('XGROUP', 'CREATE', sq, 'hubs', '0') end
      table.insert(group, sq)
    end
  end
  if #group == 1 or ARGV[6] ~= '>' then
    for _, sq in ipairs(group) do
      if #out >= want then break end
      read(sq, want - #out)
    end
  elseif #group > 1 then
    local heads = {}
    for n, sq in ipairs(group) do heads[n] = head(sq) end
    while #out < want do
      local best = nil
      for n, id in pairs(heads) do
        if id and (best == nil or older(id, heads[best])) then best = n end
      end
      if best == nil then break end
      local got = read(group[best], 1)
      if got == nil then heads[best] = nil
      elseif #out < want then heads[best] = after(group[best], got) end
    end
  end
end
return out
"""


def requirement(require: Mapping[str, str]) -> tuple[str, str]:
    """``(rid, text)`` of a requirement set: its canonical text (JSON, keys sorted) and a
    short digest of it that names its streams (``('', '')``: none)."""
    if not require:
        return "", ""
    text = json.dumps(dict(sorted(require.items())), separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:12], text


def _label_json(sets: Iterable[Mapping[str, str]]) -> str:
    """The take script's ARGV of the pool label sets it may read for."""
    unique = {json.dumps(dict(sorted(s.items())), separators=(",", ":")) for s in sets}
    return "[" + ",".join(sorted(unique)) + "]"


def _dispatch_of(host: Any) -> Any:
    return getattr(host, "_dispatch", None)


def idle_labels(host: Any, agent_type: str) -> list[dict[str, str]]:
    """The pool labels of each idle agent of ``agent_type`` on ``host`` (``{}``: an agent
    outside a pool, or a host that does not say)."""
    dispatch = _dispatch_of(host)
    if dispatch is None:
        return []
    agents = dispatch.agents
    return [
        dict(agents[a].labels) if a in agents else {} for a in dispatch.idle.get(agent_type, {})
    ]


def tier_demand(
    host: Any, local: MemoryWorkQueue, agent_type: str, idle: int
) -> list[tuple[str, int]]:
    """How many items of ``agent_type`` to take per pool label set of the idle agents:
    ``(label sets as the take script's ARGV[7], count)``; each set's idle agents less
    the ready items held here that they match (no labels anywhere: idle agents less the
    ready items, as before tiers)."""
    ready = local.depth(agent_type)  # (promotes the local items whose delay passed)
    labels = idle_labels(host, agent_type)
    if not any(labels):  # a host that does not say, or agents without labels
        return [(_label_json([{}]), idle - ready)] if idle > ready else []
    groups: dict[str, tuple[dict[str, str], int]] = {}
    for lab in labels:
        spec = _label_json([lab])
        groups[spec] = (lab, groups.get(spec, (lab, 0))[1] + 1)
    out = []
    for spec, (lab, n) in sorted(groups.items()):
        want = n - local.depth_for(agent_type, lab)
        if want > 0:
            out.append((spec, want))
    return out


def demand_of(host: Any, local: MemoryWorkQueue, idle: Mapping[str, int]) -> dict[str, int]:
    """Items per type the idle agents could take beyond those held here, counted per
    pool label set (a large agent is not fed by small items held here)."""
    out = {}
    for agent_type, n in idle.items():
        want = sum(k for _, k in tier_demand(host, local, agent_type, n))
        if want > 0:
            out[agent_type] = want
    return out


def served_labels(host: Any) -> dict[str, list[dict[str, str]]]:
    """The label sets this hub serves per type: those of its pools (one that has no agent
    now counts: it may scale up) and of its live agents (``{}`` outside a pool)."""
    sets: dict[str, list[dict[str, str]]] = {}

    def add(agent_type: str | None, labels: Mapping[str, str]) -> None:
        if agent_type and dict(labels) not in sets.setdefault(agent_type, []):
            sets[agent_type].append(dict(labels))

    hub = getattr(host, "_hub", None)
    if hub is not None:
        from ..._spec import PoolSpec

        for sup in hub.supervisors():
            if isinstance(sup.spec, PoolSpec):
                add(sup.spec.agent_type, sup.spec.labels)
    dispatch = _dispatch_of(host)
    if dispatch is not None:
        for agent in list(dispatch.agents.values()):
            add(agent.agent_type, agent.labels)
    return sets


def claim_spec(host: Any, agent_type: str) -> str:
    """The take scripts' ARGV[7] for taking a dead hub's entries of ``agent_type``: every
    label set this hub serves for it."""
    return _label_json(served_labels(host).get(agent_type) or [{}])


def tier_queues(
    client: Any, prefix: str, agent_type: str, live: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """Per requirement set of ``agent_type``: the items waiting (not taken by any hub),
    ``require`` (``"tier=large": n``), and ``unserved``, how many waiting items no live
    hub can serve (``live``: the live hubs' published ``tiers``, one mapping of type ->
    label sets per hub); each only when not empty."""
    from ._admin import _stream_counts, streams
    from ._codec import _text, _type_key

    texts = {
        _text(k): _text(v) for k, v in client.hgetall(_type_key(prefix, agent_type, "reqs")).items()
    }
    pools = [dict(s) for hub in live for s in (hub.get(agent_type) or [])]
    by_req: dict[str, int] = {}
    unserved = 0
    q = _type_key(prefix, agent_type, "q")
    for sq in streams(client, prefix, agent_type):
        rid = sq[len(q) + 1 :].partition(":")[2]
        need = json.loads(texts.get(rid, "{}")) if rid else {}
        waiting, _ = _stream_counts(client, sq, agent_type, {})
        if not waiting:
            continue
        shown = " ".join(f"{k}={v}" for k, v in sorted(need.items()))
        by_req[shown] = by_req.get(shown, 0) + waiting
        if not any(_matches(need, labels) for labels in pools):
            unserved += waiting
    out: dict[str, Any] = {}  # only when there is something to say (the JSON stays as it was)
    if any(by_req):
        out["require"] = {k: v for k, v in sorted(by_req.items()) if k}
    if unserved:
        out["unserved"] = unserved
    return out


def published(info: Mapping[str, str]) -> dict[str, list[dict[str, str]]]:
    """The ``tiers`` a hub's key holds: the label sets it serves per type."""
    raw = info.get("tiers")
    return json.loads(raw) if raw else {}
