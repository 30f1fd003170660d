"""The Lua scripts of the work store (each atomic in Redis), called by digest.

Every script that acts on an item checks first that the item is still leased to the
calling hub's incarnation (hub id + token): the fence that makes a late write of a hub
that lost its lease harmless, whatever the clocks say.
"""

from __future__ import annotations

import hashlib
import string

from ._tiers import _TAKE_LEVELS, _TIERS

GROUP = "hubs"


# Priorities and tiers (issue 21): one stream per priority level and requirement set in
# use (``_TIERS``, supervisor/work/redis/_tiers.py). KEYS[1] is always the
# type's stream of priority 0 (``P:work:{T}:q``); priority p's is ``P:work:{T}:q:<p>``,
# and the sorted set ``P:work:{T}:prios`` (member and score: p) holds the levels other
# than 0 that have a stream. All share the hash tag {T} (one slot on Redis Cluster). An
# item's hash keeps its priority (``pr``), its requirement set (``rq``, ``req``) and its
# entry's id: ``stream(pr, rq)`` is where it is.
_STREAMS = _TIERS

# Shared by the scripts that take entries: adopt one entry of stream ``sq`` for this hub,
# or drop a stale one. ARGV: hub, token, count, item-key prefix, now, lease ms (claim only).
_ADOPT = (
    _STREAMS
    + r"""
local q, dead, logk = KEYS[1], KEYS[2], KEYS[3]
local hub, tok, prefix, now = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local out = {}
local function adopt(sq, eid, fields)
  local iid = nil
  if fields then
    for i = 1, #fields, 2 do if fields[i] == 'item' then iid = fields[i + 1] end end
  end
  if not iid then redis.call('XACK', sq, 'hubs', eid); return end
  local k = prefix .. iid
  local h = redis.call('HMGET', k, 'st', 'entry', 'hub', 'tok', 'agent', 'att', 'dlv', 'max',
    'hist', 'pr', 'rq')
  local st = h[1]
  if (not st) or h[2] ~= eid or stream(h[10], h[11]) ~= sq or st == 'completed' or st == 'failed'
      or st == 'dead' or st == 'cancelled' then
    redis.call('XACK', sq, 'hubs', eid); redis.call('XDEL', sq, eid); return
  end
  local prev = h[3] or ''
  if prev == hub and h[4] == tok then
    table.insert(out, {'mine', redis.call('HGETALL', k), prev}); return
  end
  if st == 'assigned' and h[3] ~= '' then
    -- an attempt was running on a hub that is gone: it counts as a delivery
    local hist = cjson.decode(h[9] or '[]')
    table.insert(hist, {attempt = tonumber(h[6]), agent = h[3] .. '/' .. (h[5] or ''),
      outcome = 'reclaimed:hub', reason = 'hub ' .. h[3] .. ' lost its lease', at = tonumber(now)})
    while #hist > 20 do table.remove(hist, 1) end
    local enc = cjson.encode(hist)
    if tonumber(h[7]) >= tonumber(h[8]) then
      local err = 'used all ' .. h[8] .. ' deliveries; the last on hub ' .. h[3] ..
        ', which lost its lease'
      redis.call('HSET', k, 'st', 'dead', 'hist', enc, 'error', err, 'finished', now,
        'agent', '', 'hub', hub, 'tok', tok)
      redis.call('XACK', sq, 'hubs', eid); redis.call('XDEL', sq, eid)
      local dl = redis.call('XADD', dead, '*', 'item', iid, 'error', err, 'history', enc)
      redis.call('HSET', k, 'dl', dl)
      redis.call('XADD', logk, 'MAXLEN', '~', 100000, '*', 'item', iid, 'attempt', h[6],
        'hub', hub, 'agent', '', 'outcome', 'dead')
      table.insert(out, {'dead', redis.call('HGETALL', k), prev}); return
    end
    redis.call('HSET', k, 'hist', enc)
  end
  redis.call('HSET', k, 'hub', hub, 'tok', tok, 'st', 'taken', 'agent', '')
  table.insert(out, {'item', redis.call('HGETALL', k), prev})
end
redis.pcall('XGROUP', 'CREATE', q, 'hubs', '0', 'MKSTREAM')
"""
)

# Delayed items (issue 21): a submit with a not-before time waits in the sorted set
# ``P:work:{T}:delayed`` (score: Unix ms) instead of the stream; a take first moves the
# due ones (by the server's clock) into the stream, oldest time first, so no hub reads
# one before its time. KEYS[4]: that set (absent: nothing moved).
_DUE = r"""
if KEYS[4] then
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ms, 'LIMIT', 0, 1000)
  for _, iid in ipairs(due) do
    redis.call('ZREM', KEYS[4], iid)
    local k = prefix .. iid
    if redis.call('HGET', k, 'st') == 'queued' and redis.call('HGET', k, 'entry') == '' then
      local pr = redis.call('HGET', k, 'pr')  -- into its priority's (and tier's) stream
      local rq = redis.call('HGET', k, 'rq')
      local entry = push(stream(pr, rq), iid)
      enlist(pr, rq)
      redis.call('HSET', k, 'entry', entry, 'nb', '')
    end
  end
end
"""

# Read the levels' streams highest priority first (FIFO within one) until ``count``
# entries were taken; ARGV[6] '>' new entries, '0' this hub's own pending ones; ARGV[7]
# the label sets of the pool taking (JSON list; '*' every stream; absent: no labels), so
# only streams whose requirement they satisfy are read (_tiers.py). A stream found empty
# leaves its set (it is deleted: nothing is pending there).
_TAKE = _ADOPT + _DUE + _TAKE_LEVELS

# The server's clock of one type's hubs, in the hash KEYS[4] (``P:work:{T}:alive``):
# ``hub:<id>`` is the server time (ms) of that hub's last proof of life, ``clock:last`` the
# last time any hub of the type was heard, ``clock:resumed`` the end of the last silence
# longer than half a lease (the server stalled, or every hub did). Nobody is judged dead
# until a whole lease has passed since then: every hub gets its chance to renew first.
_CLOCK = r"""
local function tick(alive, lease)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local last = tonumber(redis.call('HGET', alive, 'clock:last') or '0')
  if now - last > lease / 2 then redis.call('HSET', alive, 'clock:resumed', now) end
  redis.call('HSET', alive, 'clock:last', now)
  return now
end
"""

# A hub's proof of life for one type. KEYS: alive. ARGV: hub, lease ms.
_BEAT = (
    _CLOCK
    + r"""
local now = tick(KEYS[1], tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'hub:' .. ARGV[1], now)
return now
"""
)

# Take the entries of hubs whose proof of life is older than the lease (never from the
# idle time of an entry alone: a stalled server stalls every hub's renewals with it).
# KEYS: q, dead, log, alive. ARGV: hub, token, count, item prefix, now, lease ms, the label
# sets this hub serves (as the take's ARGV[7]: only streams they satisfy).
_CLAIM = (
    _ADOPT
    + _CLOCK
    + r"""
local lease, budget = tonumber(ARGV[6]), tonumber(ARGV[3])
local alive = KEYS[4]
local now = tick(alive, lease)
local resumed = tonumber(redis.call('HGET', alive, 'clock:resumed') or '0')
if now - resumed < lease then return out end
local ok = fitting(ARGV[7])
for _, lv in ipairs(levels()) do  -- highest priority first
  local sq, start = lv[2], '-'
  if (ok == nil or ok[lv[3]]) and (sq == q or redis.call('EXISTS', sq) == 1) then
    redis.pcall('XGROUP', 'CREATE', sq, 'hubs', '0')
    for _ = 1, 10 do
      local rows = redis.call('XPENDING', sq, 'hubs', 'IDLE', lease, start, '+', budget)
      for _, row in ipairs(rows) do
        local eid, owner = row[1], row[2]
        local beat = tonumber(redis.call('HGET', alive, 'hub:' .. owner) or '0')
        if owner == hub or now - beat > lease then
          local got = redis.call('XCLAIM', sq, 'hubs', hub, lease, eid)
          if got[1] then adopt(sq, got[1][1], got[1][2])
          else redis.call('XACK', sq, 'hubs', eid) end
        end
        if #out >= budget then return out end
      end
      if #rows < budget then break end
      start = '(' .. rows[#rows][1]
    end
  end
end
return out
"""
)

# The hub id is a claim: the hub key holds the token of the incarnation that owns it.
# KEYS: hub key. ARGV: token, the dead incarnation's token it may replace, lease ms, then
# field, value pairs. Returns {1} or {0, host, pid, token} of the owner.
_HUB = r"""
local cur = redis.call('HGET', KEYS[1], 'token')
if cur and cur ~= ARGV[1] and cur ~= ARGV[2] then
  local h = redis.call('HMGET', KEYS[1], 'host', 'pid')
  return {0, h[1] or '?', h[2] or '0', cur}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1}
"""

# A hub that stops deletes its key only if it still owns the id.
_UNHUB = r"""
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then redis.call('DEL', KEYS[1]); return 1 end
return 0
"""

# KEYS: q, item[, keys, keyage, delayed]. ARGV: id, type, payload, max, source, created[,
# key, item-hash prefix, now, not-before ms, time limit s] ('' where not given): with a
# key, a kept item of the type with that key is answered (its id) and nothing is created;
# with a not-before time the item waits in the delayed set, not the stream (see _DUE); a
# time limit is kept in the item's hash (``tl``), applied by whichever hub takes it; a
# priority (ARGV[12], '' or '0': 0) and a requirement set (ARGV[13] its id, ARGV[14] its
# text, see _tiers.py) pick the item's stream (see _STREAMS).
_SUBMIT = (
    _STREAMS
    + r"""
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
local key, nb, entry = ARGV[7] or '', ARGV[10] or '', ''
local pr, rq = ARGV[12] or '0', ARGV[13] or ''
if pr == '' then pr = '0' end
if key ~= '' then
  -- an idempotency key (issue 21): KEYS[3] the type's key -> id hash, KEYS[4] the sorted
  -- set of its keys by age; ARGV[7] the key, ARGV[8] the item-hash prefix, ARGV[9] now.
  local have = redis.call('HGET', KEYS[3], key)
  if have and redis.call('EXISTS', ARGV[8] .. have) == 1 then return have end
  -- bound the index: look at its two oldest keys; one whose item expired goes, one whose
  -- item is kept goes to the back (so the index holds about the kept items' keys)
  for _, old in ipairs(redis.call('ZRANGE', KEYS[4], 0, 1)) do
    local id = redis.call('HGET', KEYS[3], old)
    if id and redis.call('EXISTS', ARGV[8] .. id) == 1 then
      redis.call('ZADD', KEYS[4], ARGV[9], old)
    else
      redis.call('HDEL', KEYS[3], old); redis.call('ZREM', KEYS[4], old)
    end
  end
  redis.call('HSET', KEYS[3], key, ARGV[1])
  redis.call('ZADD', KEYS[4], ARGV[9], key)
  redis.call('HSET', KEYS[2], 'key', key)
end
if nb ~= '' then
  -- a not-before time (issue 21): the item waits in the delayed set KEYS[5] (see _DUE)
  redis.call('ZADD', KEYS[5], nb, ARGV[1])
else
  entry = push(stream(pr, rq), ARGV[1])
  enlist(pr, rq)
end
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'type', ARGV[2], 'payload', ARGV[3], 'max', ARGV[4],
  'src', ARGV[5], 'created', ARGV[6], 'st', 'queued', 'att', 0, 'dlv', 0, 'hub', '', 'tok', '',
  'agent', '', 'entry', entry, 'hist', '[]', 'nb', nb, 'pr', pr)
if (ARGV[11] or '') ~= '' then redis.call('HSET', KEYS[2], 'tl', ARGV[11]) end
if rq ~= '' then  -- a requirement set (issue 21): its text kept for takes and status
  redis.call('HSET', reqs, rq, ARGV[14]); redis.call('HSET', KEYS[2], 'rq', rq, 'req', ARGV[14])
end
return 1
"""
)

# KEYS: q, dead, log, item. ARGV: op, hub, token, attempt, now, then per op.
_FENCED = (
    _STREAMS
    + r"""
local dead, logk, k = KEYS[2], KEYS[3], KEYS[4]
local op, hub, tok, a, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local h = redis.call('HMGET', k, 'st', 'hub', 'tok', 'att', 'entry', 'id', 'agent', 'pr', 'rq')
local st = h[1]
if not st then return {0, 'no such item in Redis'} end
local q = stream(h[8], h[9])  -- the item's stream (its priority's and tier's)
if h[2] ~= hub or h[3] ~= tok then
  return {0, 'lease lost: the item is held by hub ' .. (h[2] ~= '' and h[2] or '(none)')}
end
local att = tonumber(h[4])
local final = st == 'completed' or st == 'failed' or st == 'dead' or st == 'cancelled'
if op == 'start' then
  if final then return {1, 'finished'} end
  if a < att then return {0, 'stale attempt'} end
  redis.call('HSET', k, 'st', 'assigned', 'att', a, 'dlv', ARGV[6], 'agent', ARGV[7],
    'started', now, 'progress', '')
  return {1, ''}
elseif op == 'progress' then
  if st ~= 'assigned' or att ~= a then return {0, 'stale attempt'} end
  redis.call('HSET', k, 'progress', ARGV[6])
  if ARGV[7] ~= '' then redis.call('HSET', k, 'ckpt', ARGV[7]) end
  return {1, ''}
elseif op == 'requeue' then
  if final then return {1, 'finished'} end
  if a < att then return {0, 'stale attempt'} end
  redis.call('HSET', k, 'st', 'taken', 'att', a, 'dlv', ARGV[6], 'agent', '', 'hist', ARGV[7],
    'error', ARGV[8])
  return {1, ''}
elseif op == 'finish' then
  local target = ARGV[6]
  if final then
    if st == target and att == a then return {1, 'done already'} end
    return {0, 'the item is ' .. st .. ' already'}
  end
  if a < att then return {0, 'stale attempt'} end
  redis.call('HSET', k, 'st', target, 'att', a, 'dlv', ARGV[7], 'hist', ARGV[8], 'result', ARGV[9],
    'error', ARGV[10], 'finished', now, 'agent', ARGV[11])
  redis.call('XACK', q, 'hubs', h[5]); redis.call('XDEL', q, h[5])
  redis.call('XADD', logk, 'MAXLEN', '~', 100000, '*', 'item', h[6], 'attempt', a, 'hub', hub,
    'agent', ARGV[11], 'outcome', target)
  if target == 'dead' then
    local dl = redis.call('XADD', dead, '*', 'item', h[6], 'error', ARGV[10], 'history', ARGV[8])
    redis.call('HSET', k, 'dl', dl)
  else
    redis.call('EXPIRE', k, ARGV[12])
  end
  return {1, ''}
elseif op == 'release' then
  if final then return {1, 'finished'} end
  redis.call('XACK', q, 'hubs', h[5]); redis.call('XDEL', q, h[5])
  local entry = push(q, h[6])
  enlist(h[8], h[9])
  redis.call('HSET', k, 'st', 'queued', 'hub', '', 'tok', '', 'agent', '', 'entry', entry,
    'dlv', ARGV[6], 'hist', ARGV[7])
  return {1, ''}
elseif op == 'renew' then
  if st == 'cancelled' then return {0, 'cancelled', h[7] or ''} end
  if final then return {0, 'finished'} end
  redis.pcall('XCLAIM', q, 'hubs', hub, 0, h[5], 'JUSTID')
  return {1, ''}
end
return {0, 'unknown op ' .. op}
"""
)

_RETRY = (
    _STREAMS
    + r"""
local k = KEYS[4]
local st = redis.call('HGET', k, 'st')
if not st then return {0, 'no such item'} end
if st ~= 'dead' and st ~= 'failed' then return {0, 'it is ' .. st} end
local dl = redis.call('HGET', k, 'dl')
if dl and dl ~= '' then redis.call('XDEL', KEYS[2], dl) end
local pr = redis.call('HGET', k, 'pr')  -- back of its priority's (and tier's) stream
local rq = redis.call('HGET', k, 'rq')
local entry = push(stream(pr, rq), ARGV[1])
enlist(pr, rq)
redis.call('HSET', k, 'st', 'queued', 'dlv', 0, 'error', '', 'hub', '', 'tok', '', 'agent', '',
  'entry', entry, 'finished', '', 'dl', '')
redis.call('PERSIST', k)
return {1, ''}
"""
)

# -- cancel and time limits (issue 21) --
# Cancel an item whatever hub holds it, at once and atomically: it ends cancelled in the
# record (its entry acked and deleted, so no hub takes it again; one log entry). A hub
# holding it learns it from its next lease renewal (reply {0, 'cancelled'}) and tells its
# agent; its own later writes for the item are refused (the item has ended).
# KEYS: q, dead, log, item. ARGV: item id, now, error, seconds kept.
# Returns {1, hub holding it or ''} or {0, why}.
_CANCEL = (
    _STREAMS
    + r"""
local logk, k = KEYS[3], KEYS[4]
local h = redis.call('HMGET', k, 'st', 'entry', 'hub', 'att', 'agent', 'pr', 'rq')
local q = stream(h[6], h[7])
local st = h[1]
if not st then return {0, 'no such item'} end
if st == 'completed' or st == 'failed' or st == 'dead' or st == 'cancelled' then
  return {0, 'it has ended (' .. st .. ')'}
end
local holder = h[3] or ''
local hist = cjson.decode(redis.call('HGET', k, 'hist') or '[]')
if st == 'assigned' then
  table.insert(hist, {attempt = tonumber(h[4]), agent = holder .. '/' .. (h[5] or ''),
    outcome = 'cancelled', reason = ARGV[3], at = tonumber(ARGV[2]), hub = holder})
  while #hist > 20 do table.remove(hist, 1) end
end
redis.call('HSET', k, 'st', 'cancelled', 'error', ARGV[3], 'finished', ARGV[2],
  'hist', cjson.encode(hist))
if h[2] and h[2] ~= '' then
  redis.call('XACK', q, 'hubs', h[2]); redis.call('XDEL', q, h[2])
end
redis.call('XADD', logk, 'MAXLEN', '~', 100000, '*', 'item', ARGV[1], 'attempt', h[4] or '0',
  'hub', holder, 'agent', h[5] or '', 'outcome', 'cancelled')
redis.call('EXPIRE', k, ARGV[4])
return {1, holder}
"""
)

# Entries no hub has taken yet, over every level's stream: each group's lag (0 when
# Redis cannot tell, as before), or every entry of a stream no hub has read yet (no
# group). KEYS: the type's stream of priority 0. ARGV[1]: the label sets of this hub's
# pools (as the take's ARGV[7]: only the streams they satisfy; absent: every stream).
_LAG = (
    _STREAMS
    + r"""
local n = 0
local ok = fitting(ARGV[1] or '*')
for _, lv in ipairs(levels()) do
  if (ok == nil or ok[lv[3]]) and redis.call('EXISTS', lv[2]) == 1 then
    local grouped = false
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', lv[2])) do
      local name, lag = nil, nil
      for i = 1, #g, 2 do
        if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'lag' then lag = g[i + 1] end
      end
      if name == 'hubs' then
        grouped = true
        if lag then n = n + tonumber(lag) end
      end
    end
    if not grouped then n = n + redis.call('XLEN', lv[2]) end
  end
end
return n
"""
)

_ID_CHARS = string.ascii_lowercase + string.digits
# Rounds call the scripts by digest (EVALSHA): a few bytes per call instead of the body.
_SHA = {
    script: hashlib.sha1(script.encode()).hexdigest()
    for script in (_TAKE, _CLAIM, _SUBMIT, _FENCED, _RETRY, _BEAT, _HUB, _UNHUB, _CANCEL, _LAG)
}
