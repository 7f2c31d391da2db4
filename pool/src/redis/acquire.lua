-- Pick a key for one attempt, count it, and answer, in one round trip.
-- KEYS: the pool's state hash, then its bucket hash.
-- ARGV: the strategy, a call counter (ties under ll/w start at counter % n), the tried list
--       (",0,2,"), then the fields the script reads from the state hash: 'x', 'mk', 'rr' (rr
--       only) and per key its count field `n:<fp>`; then per key its rpm, then (w only) per
--       key its weight. The field names come ready-made: building them here costs more.
--       Strategies: rr (round-robin from the shared cursor); lc (least count: least-loaded or
--       weighted where every key has the same limit or weight; a tie goes to the lowest index,
--       and the count it adds breaks the next tie); ll (least share of its own rpm); w (least
--       share of its weight).
-- Returns index + 1 (counted), -wait_ms (none ready yet), or 0 (nothing can serve).
--
-- Windows are per-second buckets (`<fp>:<second>` in the bucket hash), with each key's live
-- total kept in `n:<fp>`. A bucket counts until its whole second has left the minute, so a
-- window spans at most 61 s and a key never takes more than its rpm in any 60 s.
--
-- Cost model (Redis 7, instructions per call measured with callgrind): a script call with
-- its arguments ~26k; a redis.call ~5k, plus ~1.2k per field it names; a number passed to a
-- command ~2k (formatted with printf); in Lua, tonumber ~1.9k (strtod), a concatenation
-- ~0.7k, a table ~1-2k, a string comparison ~0.6k. So the hot path (lc, no mark in force,
-- nothing due) is TIME, one HMGET (`x`, `mk`, each key's count, its fields straight from
-- ARGV), one HINCRBY of the bucket and one of the count; it builds no table, converts no
-- number, compares counts as decimal strings (shorter is smaller; digit strings of one
-- length order the same under any collation) and answers with a single number. Marks are
-- read only while `mk` says one may be in force. All of it: ~75k instructions per call.
-- The rest is paid rarely: moving expired buckets out of `n` (once a second for the whole
-- pool, when `x` is due) and finding when a full key frees up (once per full period, in
-- `f:<fp>`).
local strategy = ARGV[1]
local tried = ARGV[3]
local rr = strategy == 'rr'
local by_share = strategy == 'll' or strategy == 'w'
-- vals[1]: x; vals[2]: mk; vals[3]: rr (rr only); key i's count at vals[c0 + i], its field
-- name at ARGV[3 + c0 + i], its rpm at ARGV[r0 + i], its weight (w) at ARGV[r0 + n + i].
local c0 = 3
if rr then c0 = 4 end
local n = (#ARGV - 2 - c0) / 2
if strategy == 'w' then n = (#ARGV - 2 - c0) / 3 end
local r0 = 3 + c0 + n
local state, buckets = KEYS[1], KEYS[2]
-- Redis keeps a small hash as a listpack, which it searches field by field: a bucket hash of a
-- minute's seconds would cost microseconds per lookup. A value over 64 bytes makes it a hash
-- table for good, with constant-time lookups; both hashes carry one, in field '_'.
local TABLE = 'keyrelay: this value is longer than 64 bytes so that Redis keeps the hash a hash table'
local t = redis.call('TIME')
local secs = t[1]
local sec, now -- seconds and milliseconds as numbers, computed where needed

local vals = redis.call('HMGET', state, unpack(ARGV, 4, r0 - 1))
-- Writes to the state hash besides the count, made on the rare paths.
local writes, w = nil, 0

-- x: the second at which some key's oldest bucket leaves the window ('0' or absent: none).
local due = vals[1]
if due and due ~= '0' and (#due < #secs or (#due == #secs and due <= secs)) then
  -- Move expired buckets out of every key's count (into its total), and find the next due.
  sec = tonumber(secs)
  writes = {}
  local next_due = 0
  for i = 0, n - 1 do
    local fp = string.sub(ARGV[3 + c0 + i], 3)
    local ot = redis.call('HMGET', state, 'o:' .. fp, 't:' .. fp)
    local oldest = tonumber(ot[1]) or 0
    if oldest > 0 and oldest <= sec - 61 then
      -- Buckets of a key lie within 60 s of its oldest one. When all of them have left the
      -- window, its whole count goes (the bucket hash may have expired already).
      local count = tonumber(vals[c0 + i]) or 0
      local names = {}
      for s = oldest, math.min(sec - 61, oldest + 60) do names[#names + 1] = fp .. ':' .. s end
      local dropped = count
      if oldest + 60 > sec - 61 then
        dropped = 0
        local got = redis.call('HMGET', buckets, unpack(names))
        for k = 1, #names do dropped = dropped + (tonumber(got[k]) or 0) end
      end
      redis.call('HDEL', buckets, unpack(names))
      local used = math.max(0, count - dropped)
      if used > 0 then oldest = sec - 60 else oldest = 0 end
      vals[c0 + i] = tostring(used)
      writes[w + 1] = ARGV[3 + c0 + i]; writes[w + 2] = used
      writes[w + 3] = 'o:' .. fp; writes[w + 4] = oldest
      writes[w + 5] = 't:' .. fp; writes[w + 6] = (tonumber(ot[2]) or 0) + dropped
      w = w + 6
    end
    if oldest > 0 and (next_due == 0 or oldest + 61 < next_due) then next_due = oldest + 61 end
  end
  due = next_due
  writes[w + 1] = 'x'; writes[w + 2] = due
  w = w + 2
end

-- mk: no mark ends later than this (ms; a disable counts as never). Written by mark.lua, and
-- brought down here to what the marks in force need, or removed when none is.
local marks
local mk = vals[2]
if mk then
  mk = tonumber(mk)
  sec = sec or tonumber(secs)
  now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
  local top = 0
  if mk > now then
    local names = {}
    for i = 0, n - 1 do names[i + 1] = 'm:' .. string.sub(ARGV[3 + c0 + i], 3) end
    marks = redis.call('HMGET', state, unpack(names))
    for i = 1, n do
      if marks[i] then
        local until_ms, kind = string.match(marks[i], '^(%d+)|(%a+)')
        if kind == 'disabled' then
          top = mk
        elseif until_ms and tonumber(until_ms) > math.max(now, top) then
          top = tonumber(until_ms)
        end
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

local cursor = 0
if rr then
  cursor = (tonumber(vals[3]) or 0) % n
elseif by_share then
  cursor = tonumber(ARGV[2]) % n
end
local best, best_c, best_used, best_den
local wait = -1
local any_tried = tried ~= ','
for j = 0, n - 1 do
  local i = (cursor + j) % n
  if not (any_tried and string.find(tried, ',' .. i .. ',', 1, true)) then
    local mark = marks and marks[i + 1]
    local ready_in, disabled = 0, false
    if mark then
      local until_ms, kind = string.match(mark, '^(%d+)|(%a+)')
      if kind == 'disabled' then
        disabled = true
      elseif until_ms then
        ready_in = math.max(0, tonumber(until_ms) - now)
      end
    end
    if not disabled then
      local rpm_s = ARGV[r0 + i]
      local c = vals[c0 + i] or '0'
      -- Full when the count reaches the rpm, compared as decimal strings.
      if #c > #rpm_s or (#c == #rpm_s and c >= rpm_s) then
        -- f:<fp> holds when it frees up, unless that has passed and must be found again.
        local used, rpm = tonumber(c), tonumber(rpm_s)
        local fp = string.sub(ARGV[3 + c0 + i], 3)
        sec = sec or tonumber(secs)
        now = now or sec * 1000 + math.floor(tonumber(t[2]) / 1000)
        local of = redis.call('HMGET', state, 'o:' .. fp, 'f:' .. fp)
        local full = tonumber(of[2]) or 0
        if full <= now then
          local from = tonumber(of[1]) or 0
          if from <= 0 then from = sec end
          local names = {}
          for s = from, sec do names[#names + 1] = fp .. ':' .. s end
          local got = redis.call('HMGET', buckets, unpack(names))
          local left, at = used, sec
          for k = 1, #names do
            left = left - (tonumber(got[k]) or 0)
            if left < rpm then
              at = from + k - 1
              break
            end
          end
          full = (at + 61) * 1000
          writes = writes or {}
          writes[w + 1] = 'f:' .. fp; writes[w + 2] = full
          w = w + 2
        end
        ready_in = math.max(ready_in, full - now)
      end
      if ready_in <= 0 then
        if rr then
          -- Round-robin takes the first ready key from the shared cursor.
          best, best_c = i, c
          break
        elseif by_share then
          local used, den = tonumber(c), nil
          if strategy == 'w' then den = tonumber(ARGV[r0 + n + i]) else den = tonumber(rpm_s) end
          if best == nil or used * best_den < best_used * den then
            best, best_c, best_used, best_den = i, c, used, den
          end
        elseif best == nil or #c < #best_c or (#c == #best_c and c < best_c) then
          best, best_c = i, c
        end
      elseif wait < 0 or ready_in < wait then
        wait = ready_in
      end
    end
  end
end

if best == nil then
  if w > 0 then redis.call('HSET', state, unpack(writes)) end
  if wait < 0 then return 0 end
  return -math.max(1, wait)
end

local fp = string.sub(ARGV[3 + c0 + best], 3)
-- A new bucket (the first request of this second for this key) renews both hashes' TTLs,
-- below: at most once a second per key.
local fresh = redis.call('HINCRBY', buckets, fp .. ':' .. secs, '1') == 1
if fresh then
  redis.call('HSETNX', buckets, '_', TABLE)
  redis.call('PEXPIRE', buckets, '125000')
end
local first = best_c == '0'
if first or rr or w > 0 then
  writes = writes or {}
  writes[w + 1] = ARGV[3 + c0 + best]; writes[w + 2] = tonumber(best_c) + 1
  w = w + 2
  if first then
    -- No live bucket before this one: it is the key's oldest, and may be the next to expire.
    sec = sec or tonumber(secs)
    local due_n = tonumber(due) or 0
    writes[w + 1] = 'o:' .. fp; writes[w + 2] = secs
    w = w + 2
    if due_n <= 0 or sec + 61 < due_n then
      writes[w + 1] = 'x'; writes[w + 2] = sec + 61
      w = w + 2
    end
  end
  if rr then
    writes[w + 1] = 'rr'; writes[w + 2] = (best + 1) % n
    w = w + 2
  end
  redis.call('HSET', state, unpack(writes))
else
  redis.call('HINCRBY', state, ARGV[3 + c0 + best], '1')
end
if fresh then
  redis.call('HSETNX', state, '_', TABLE)
  -- A day from now, unless a mark already asked for longer (GT never shortens; it does not
  -- apply to a key without a TTL, hence the second call).
  redis.call('PEXPIRE', state, '86400000', 'GT')
  if redis.call('PTTL', state) < 0 then redis.call('PEXPIRE', state, '86400000') end
end
return best + 1
