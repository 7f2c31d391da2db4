-- acquire.lua: pick a key for one attempt, count it, and answer, in one round trip.
-- common.lua comes first: the constants (WINDOW_S, BUCKETS, STATE_TTL_MS, BUCKET_TTL_MS,
-- TABLE) and now_ms, bucket, expired, parse_mark, keep.
--
-- KEYS[1]  the pool's state hash    keyrelay:{<pool>}:state
-- KEYS[2]  the pool's bucket hash   keyrelay:{<pool>}:b
-- KEYS[3]  the pool's due set       keyrelay:{<pool>}:due
-- KEYS[4]  the pool's operator hash keyrelay:{<pool>}:ops  (read only to restore disables)
--
-- ARGV, for n keys (key i = 0 .. n-1, in the pool's order):
--   [1]                strategy: rr | lc | ll | w (below)
--   [2]                call counter: ties under ll and w start at key (counter % n)
--   [3]                keys already tried, as ",0,2," ("," for none)
--   [FP + i]           key i's fingerprint                       FP     = 4
--   [RPM + i]          key i's rpm                               RPM    = FP + n
--   [WEIGHT + i]       key i's weight, under w only              WEIGHT = RPM + n
--   [READ ..]          to the end, the state fields read in one HMGET:
--                        x, mk, rr (rr only), then per key its count field `n:<fp>`.
--                      Sent ready-made: building them here would cost a concatenation per
--                      key and a table on every call.
--
--   A lease (shares.rs) sends ARGV[3] as `<tried>|<want>|<lease_ms>|<returns>`: take up to
--   `want` requests of the picked key at once (at most 1% of its rpm, at least 1, never past
--   its rpm), for lease_ms or what is left of this second if less (the span answered), and
--   first give back the unused requests of earlier leases, `<fp>:<second>:<count>` joined by
--   `,` (each taken off its bucket and the key's count while that bucket is live). want 0
--   only gives back.
--
-- Returns index + 1 (counted), -wait_ms (none ready yet), or 0 (nothing can serve); a lease
-- that took a key, {index + 1, taken, ms the lease may run, the second it was counted in}.
--
-- Strategies: rr (round-robin from the shared cursor `rr`); lc (least count: least-loaded or
-- weighted where every key has the same limit or weight; a tie goes to the lowest index, and
-- the count it adds breaks the next tie); ll (least share of its own rpm); w (least share of
-- its weight).
--
-- Windows are per-second buckets (`<fp>:<second>` in the bucket hash), with each key's live
-- total kept in `n:<fp>` (see common.lua and the data model in mod.rs).
--
-- Cost model (Redis 7, instructions per call measured with callgrind, bench/lua-cost.sh): a
-- script call with its arguments ~26k; a redis.call ~5k, plus ~1.2k per field it names; a
-- number passed to a command ~2k (formatted with printf); in Lua, tonumber ~1.9k (strtod), a
-- concatenation ~0.7k, a table ~1-2k, a string comparison ~0.6k. So the hot path (lc, no mark
-- in force, nothing due) is TIME, one HMGET (`x`, `mk`, each key's count, its fields straight
-- from ARGV), one HINCRBY of the bucket and one of the count; it builds no table, converts no
-- number, compares counts as decimal strings (shorter is smaller; digit strings of one length
-- order the same under any collation) and answers with a single number. Marks are read only
-- while `mk` says one may be in force. All of it: ~79k instructions per call (76.6k before the
-- due set and operator hash became KEYS 3 and 4, passed but not touched here), of which ~4k
-- are common.lua's functions (Lua 5.1 makes every function anew on each call) and ~1k the
-- fingerprint run. The rest is paid rarely: moving expired buckets out of the counts (once a
-- second for the whole pool, when `x` is due) and finding when a full key frees up (once per
-- full period, kept in `f:<fp>`). Those rare paths are written inline, not as functions, for
-- the same reason. Looking for a lease in ARGV[3] (one plain string.find) adds ~0.7k to a plain
-- call (80.5k against 79.8k, bench/lua-cost.sh); a lease call's extra work (giving back,
-- the table answer) is spread over the requests it takes.

local state, buckets, dues, ops = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- Keys other key sets count, visited per call at most (see the sweep below).
local SWEEP_MAX = 16
local strategy, tried = ARGV[1], ARGV[3]
local want, lease_ms = 1, 0
if string.find(tried, '|', 1, true) then
  local t, wn, lm, back = string.match(tried, '^([^|]*)|(%d+)|(%d+)|(.*)$')
  tried, want, lease_ms = t, tonumber(wn), tonumber(lm)
  -- Give back what earlier leases did not use, before anything is read.
  for fp, s, k in string.gmatch(back, '([^:,]+):(%d+):(%d+)') do
    local name = bucket(fp, s)
    local have = tonumber(redis.call('HGET', buckets, name))
    if have and have > 0 then
      local give = math.min(tonumber(k), have)
      redis.call('HINCRBY', buckets, name, -give)
      local count = tonumber(redis.call('HGET', state, 'n:' .. fp)) or 0
      if count > 0 then redis.call('HINCRBY', state, 'n:' .. fp, -math.min(give, count)) end
      redis.call('HDEL', state, 'f:' .. fp)
    end
  end
  if want == 0 then return 0 end
end
local rr = strategy == 'rr'
local by_share = strategy == 'll' or strategy == 'w'

-- The layout above, from #ARGV: 3 arguments, then per key a fingerprint, an rpm, a count
-- field (and under w a weight), and 2 fields read besides the counts (under rr 3).
local FIXED_READS = 2
if rr then FIXED_READS = 3 end
local per_key = 3
if strategy == 'w' then per_key = 4 end
local n = (#ARGV - 3 - FIXED_READS) / per_key
local FP = 4
local RPM = FP + n
local WEIGHT = RPM + n
local READ = RPM + n
if strategy == 'w' then READ = WEIGHT + n end
-- In the HMGET's answer: x, mk, rr, then key i's count at vals[COUNT + i]. Its field name is
-- ARGV[COUNT_FIELD + i].
local X, MK, RR, COUNT = 1, 2, 3, FIXED_READS + 1
local COUNT_FIELD = READ + FIXED_READS

local time = redis.call('TIME')
local secs = time[1] -- this second, as Redis's decimal string
local sec, now -- this second and millisecond as numbers, computed where needed
local vals = redis.call('HMGET', state, unpack(ARGV, READ, #ARGV))
-- State fields to write besides the count, gathered by the rare paths for one HSET:
-- writes[1 .. w], field then value.
local writes, w = nil, 0

-- x: the lowest score in the due set ('0' or absent: none), compared as decimal strings. When
-- it is due, sweep: look at this spec's keys and at up to SWEEP_MAX other keys the due set says
-- are due (keys another key set counts on this pool name: a rolling reload, a second
-- deployment; each entry is visited once its time comes, so every key set's counts are kept by
-- whichever instance runs). For each, move the buckets that have left the window out of its
-- count (into its total), drop its count fields once nothing is live and its mark once it has
-- ended (never a disable), and score it again in the due set (or take it out). Then x is the
-- due set's lowest score again. The work per call is bounded: n + SWEEP_MAX keys, each at most
-- BUCKETS bucket names.
local due = vals[X]
if due and due ~= '0' and (#due < #secs or (#due == #secs and due <= secs)) then
  sec = tonumber(secs)
  now = now_ms(time)
  writes = {}
  local visit, own, gone = {}, {}, {}
  for i = 0, n - 1 do
    visit[i + 1] = ARGV[FP + i]
    own[ARGV[FP + i]] = i
  end
  local listed = {}
  for _, fp in ipairs(redis.call('ZRANGEBYSCORE', dues, '-inf', sec, 'LIMIT', 0, SWEEP_MAX)) do
    listed[fp] = true
    if not own[fp] then visit[#visit + 1] = fp end
  end
  for _, fp in ipairs(visit) do
    local v = redis.call('HMGET', state, 'n:' .. fp, 'o:' .. fp, 't:' .. fp, 'm:' .. fp)
    local count, oldest = tonumber(v[1]) or 0, tonumber(v[2]) or 0
    local used = count
    local names, all = expired(fp, oldest, sec)
    if names then
      -- All gone: the whole count goes (the bucket hash may have expired already).
      local dropped = count
      if not all then
        dropped = 0
        for _, c in ipairs(redis.call('HMGET', buckets, unpack(names))) do
          dropped = dropped + (tonumber(c) or 0)
        end
      end
      redis.call('HDEL', buckets, unpack(names))
      used = math.max(0, count - dropped)
      writes[w + 1] = 't:' .. fp; writes[w + 2] = (tonumber(v[3]) or 0) + dropped
      w = w + 2
    end
    local at = nil -- the second to visit this key again
    if used > 0 then
      if names then
        -- What is left is in the window, so no older than sec - WINDOW_S.
        oldest = sec - WINDOW_S
        writes[w + 1] = 'n:' .. fp; writes[w + 2] = used
        writes[w + 3] = 'o:' .. fp; writes[w + 4] = oldest
        w = w + 4
      end
      at = oldest + BUCKETS
    elseif v[1] or v[2] then
      gone[#gone + 1] = 'n:' .. fp; gone[#gone + 1] = 'o:' .. fp; gone[#gone + 1] = 'f:' .. fp
    end
    if own[fp] then vals[COUNT + own[fp]] = tostring(used) end
    local until_ms, kind = parse_mark(v[4])
    if kind and kind ~= 'disabled' then
      if until_ms <= now then
        gone[#gone + 1] = 'm:' .. fp
      elseif not at then
        at = math.ceil(until_ms / 1000)
      end
    end
    if at then
      redis.call('ZADD', dues, at, fp)
    elseif listed[fp] or v[1] or v[2] or kind then
      redis.call('ZREM', dues, fp)
    end
  end
  if #gone > 0 then redis.call('HDEL', state, unpack(gone)) end
  redis.call('PEXPIRE', dues, STATE_TTL_MS)
  due = redis.call('ZRANGE', dues, 0, 0, 'WITHSCORES')[2] or '0'
  writes[w + 1] = 'x'; writes[w + 2] = due
  w = w + 2
end

-- op: whether the state hash mirrors the operator hash's disables (act.lua). A state hash that
-- expired (a day with no new bucket) lost the mirror with everything else; it is rebuilt on
-- the first call that finds no key counted (x absent or 0, as in every new state hash), before
-- any key is picked.
if (not due or due == '0') and not redis.call('HGET', state, 'op') then
  local acts = redis.call('HGETALL', ops)
  local set = {'op', '1'}
  for k = 1, #acts, 2 do
    local at, act = string.match(acts[k + 1], '^(%d+)|(%a+)$')
    if act == 'disabled' then
      set[#set + 1] = 'm:' .. acts[k]; set[#set + 1] = '0|disabled|' .. at .. '|manual'
    end
  end
  if #set > 2 then
    set[#set + 1] = 'mk'; set[#set + 1] = FOREVER
    vals[MK] = FOREVER
  end
  redis.call('HSET', state, unpack(set))
  keep(state, STATE_TTL_MS)
end

-- mk: no mark ends later than this (ms; a disable counts as never). mark.lua raises it; here
-- the marks are read while one may be in force, and mk is brought down to the latest end
-- among them, or removed when none is.
local marks
local mk = vals[MK]
if mk then
  mk = tonumber(mk)
  sec = sec or tonumber(secs)
  now = now_ms(time)
  local top = 0
  if mk > now then
    local names = {}
    for i = 0, n - 1 do names[i + 1] = 'm:' .. ARGV[FP + i] end
    marks = redis.call('HMGET', state, unpack(names))
    for i = 1, n do
      local until_ms, kind = parse_mark(marks[i])
      if kind == 'disabled' then
        top = mk
      elseif until_ms and until_ms > math.max(now, top) then
        top = until_ms
      end
    end
  end
  if top == 0 then
    redis.call('HDEL', state, 'mk')
  elseif top < mk then
    writes = writes or {}
    writes[w + 1] = 'mk'; writes[w + 2] = top
    w = w + 2
  end
end

-- Pick: the first ready key from the cursor (rr), or the ready key with the least count (lc)
-- or share (ll, w). A key not ready adds its wait.
local cursor = 0
if rr then
  cursor = (tonumber(vals[RR]) or 0) % n
elseif by_share then
  cursor = tonumber(ARGV[2]) % n
end
local best, best_c, best_used, best_den
local wait = -1
local any_tried = tried ~= ','
for j = 0, n - 1 do
  local i = (cursor + j) % n
  local ready_in, out = 0, any_tried and string.find(tried, ',' .. i .. ',', 1, true)
  if marks and not out then
    local until_ms, kind = parse_mark(marks[i + 1])
    if kind == 'disabled' then
      out = true
    elseif until_ms then
      ready_in = math.max(0, until_ms - now)
    end
  end
  if not out then
    local rpm_s = ARGV[RPM + i]
    local c = vals[COUNT + i] or '0'
    -- Full when the count reaches the rpm, compared as decimal strings.
    if #c > #rpm_s or (#c == #rpm_s and c >= rpm_s) then
      -- When it frees up (ms) is kept in f:<fp>; once that has passed it is found again from
      -- the key's buckets: the second whose bucket, leaving, brings the count under the rpm.
      local fp = ARGV[FP + i]
      sec = sec or tonumber(secs)
      now = now or now_ms(time)
      local of = redis.call('HMGET', state, 'o:' .. fp, 'f:' .. fp)
      local frees_ms = tonumber(of[2]) or 0
      if frees_ms <= now then
        local from = tonumber(of[1]) or 0
        if from <= 0 then from = sec end
        local names = {}
        for s = from, sec do names[#names + 1] = bucket(fp, s) end
        local got = redis.call('HMGET', buckets, unpack(names))
        local left, rpm, at = tonumber(c), tonumber(rpm_s), sec
        for k = 1, #names do
          left = left - (tonumber(got[k]) or 0)
          if left < rpm then
            at = from + k - 1
            break
          end
        end
        frees_ms = (at + BUCKETS) * 1000
        writes = writes or {}
        writes[w + 1] = 'f:' .. fp; writes[w + 2] = frees_ms
        w = w + 2
      end
      ready_in = math.max(ready_in, frees_ms - now)
    end
    if ready_in > 0 then
      if wait < 0 or ready_in < wait then wait = ready_in end
    elseif rr then
      best, best_c = i, c
      break
    elseif by_share then
      local used, den = tonumber(c), tonumber(rpm_s)
      if strategy == 'w' then den = tonumber(ARGV[WEIGHT + i]) end
      if best == nil or used * best_den < best_used * den then
        best, best_c, best_used, best_den = i, c, used, den
      end
    elseif best == nil or #c < #best_c or (#c == #best_c and c < best_c) then
      best, best_c = i, c
    end
  end
end

if best == nil then
  if w > 0 then redis.call('HSET', state, unpack(writes)) end
  if wait < 0 then return 0 end
  return -math.max(1, wait)
end

-- Count: the key's bucket of this second and its count. A new bucket (the first request of
-- this second for this key) renews both hashes' TTLs: at most once a second per key.
local fp = ARGV[FP + best]
-- A lease takes more than one, within this second (its bucket), 1% of the rpm and the rpm.
-- by: take as Redis gets it; a plain call sends the string '1', since a number passed to a
-- command costs a printf (~2k instructions).
local take, span, by = 1, 0, '1'
if want > 1 then
  span = math.min(lease_ms, 1000 - math.floor(tonumber(time[2]) / 1000))
  local rpm = tonumber(ARGV[RPM + best])
  take = math.min(want, math.floor(rpm / 100), rpm - tonumber(best_c))
  if take < 1 then take = 1 end
  by = take
end
local fresh = redis.call('HINCRBY', buckets, bucket(fp, secs), by) == take
if fresh then
  redis.call('HSETNX', buckets, '_', TABLE)
  redis.call('PEXPIRE', buckets, BUCKET_TTL_MS)
end
local first = best_c == '0'
if first or rr or w > 0 then
  writes = writes or {}
  writes[w + 1] = ARGV[COUNT_FIELD + best]; writes[w + 2] = tonumber(best_c) + take
  w = w + 2
  if first then
    -- No live bucket before this one: it is the key's oldest, and may be the next to leave.
    sec = sec or tonumber(secs)
    local due_n = tonumber(due) or 0
    writes[w + 1] = 'o:' .. fp; writes[w + 2] = secs
    w = w + 2
    if due_n <= 0 or sec + BUCKETS < due_n then
      writes[w + 1] = 'x'; writes[w + 2] = sec + BUCKETS
      w = w + 2
    end
    redis.call('ZADD', dues, sec + BUCKETS, fp)
    redis.call('PEXPIRE', dues, STATE_TTL_MS)
  end
  if rr then
    writes[w + 1] = 'rr'; writes[w + 2] = (best + 1) % n
    w = w + 2
  end
  redis.call('HSET', state, unpack(writes))
else
  redis.call('HINCRBY', state, ARGV[COUNT_FIELD + best], by)
end
if fresh then
  redis.call('HSETNX', state, '_', TABLE)
  keep(state, STATE_TTL_MS)
end
if want > 1 then return {best + 1, take, span, tonumber(secs)} end
return best + 1
