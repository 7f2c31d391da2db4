-- acquire.lua: pick a key for one attempt, count it, and answer, in one round trip.
-- common.lua comes first: the constants (WINDOW_S, BUCKETS, STATE_TTL_MS, BUCKET_TTL_MS,
-- TABLE) and now_ms, bucket, expired, parse_mark, keep.
--
-- KEYS[1]  the pool's state hash    keyrelay:{<pool>}:state
-- KEYS[2]  the pool's bucket hash   keyrelay:{<pool>}:b
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
-- Returns index + 1 (counted), -wait_ms (none ready yet), or 0 (nothing can serve).
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
-- while `mk` says one may be in force. All of it: ~76k instructions per call, of which ~4k
-- are common.lua's functions (Lua 5.1 makes every function anew on each call) and ~1k the
-- fingerprint run. The rest is paid rarely: moving expired buckets out of the counts (once a
-- second for the whole pool, when `x` is due) and finding when a full key frees up (once per
-- full period, kept in `f:<fp>`). Those rare paths are written inline, not as functions, for
-- the same reason.

local state, buckets = KEYS[1], KEYS[2]
local strategy, tried = ARGV[1], ARGV[3]
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

-- x: the second at which some key's oldest bucket leaves the window ('0' or absent: none),
-- compared as decimal strings. When due, move every key's buckets that have left the window
-- out of its count (into its total), and find the next due.
local due = vals[X]
if due and due ~= '0' and (#due < #secs or (#due == #secs and due <= secs)) then
  sec = tonumber(secs)
  writes = {}
  local next_due = 0
  for i = 0, n - 1 do
    local fp = ARGV[FP + i]
    local ot = redis.call('HMGET', state, 'o:' .. fp, 't:' .. fp)
    local oldest = tonumber(ot[1]) or 0
    local names, all = expired(fp, oldest, sec)
    if names then
      local count = tonumber(vals[COUNT + i]) or 0
      -- All gone: the whole count goes (the bucket hash may have expired already).
      local dropped = count
      if not all then
        dropped = 0
        for _, c in ipairs(redis.call('HMGET', buckets, unpack(names))) do
          dropped = dropped + (tonumber(c) or 0)
        end
      end
      redis.call('HDEL', buckets, unpack(names))
      local used = math.max(0, count - dropped)
      -- What is left is in the window, so no older than sec - WINDOW_S.
      if used > 0 then oldest = sec - WINDOW_S else oldest = 0 end
      vals[COUNT + i] = tostring(used)
      writes[w + 1] = ARGV[COUNT_FIELD + i]; writes[w + 2] = used
      writes[w + 3] = 'o:' .. fp; writes[w + 4] = oldest
      writes[w + 5] = 't:' .. fp; writes[w + 6] = (tonumber(ot[2]) or 0) + dropped
      w = w + 6
    end
    if oldest > 0 and (next_due == 0 or oldest + BUCKETS < next_due) then
      next_due = oldest + BUCKETS
    end
  end
  due = next_due
  writes[w + 1] = 'x'; writes[w + 2] = due
  w = w + 2
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
local fresh = redis.call('HINCRBY', buckets, bucket(fp, secs), '1') == 1
if fresh then
  redis.call('HSETNX', buckets, '_', TABLE)
  redis.call('PEXPIRE', buckets, BUCKET_TTL_MS)
end
local first = best_c == '0'
if first or rr or w > 0 then
  writes = writes or {}
  writes[w + 1] = ARGV[COUNT_FIELD + best]; writes[w + 2] = tonumber(best_c) + 1
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
  end
  if rr then
    writes[w + 1] = 'rr'; writes[w + 2] = (best + 1) % n
    w = w + 2
  end
  redis.call('HSET', state, unpack(writes))
else
  redis.call('HINCRBY', state, ARGV[COUNT_FIELD + best], '1')
end
if fresh then
  redis.call('HSETNX', state, '_', TABLE)
  keep(state, STATE_TTL_MS)
end
return best + 1
