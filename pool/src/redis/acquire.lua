-- Pick a key for one attempt, count it, and answer, in one round trip.
-- KEYS: the pool's state hash, then its bucket hash.
-- ARGV: the strategy, a call counter (ties under lc/ll/w start at counter % n; on
--       counter % 64 == 0 the state hash's TTL is refreshed), the tried list (",0,2,"),
--       then per key its fingerprint and rpm, then (w only) per key its weight.
--       Strategies: rr (round-robin from the shared cursor); lc (least count: least-loaded or
--       weighted where every key has the same limit or weight); ll (least share of its own
--       rpm); w (least share of its weight).
-- Returns index + 1 (counted), -wait_ms (none ready yet), or 0 (nothing can serve).
--
-- Windows are per-second buckets (`<fp>:<second>` in the bucket hash), with each key's live
-- total kept in `n:<fp>`. A bucket counts until its whole second has left the minute, so a
-- window spans at most 61 s and a key never takes more than its rpm in any 60 s.
--
-- Cost model (Redis 7, measured): an argument costs ~0.1 us, a redis.call ~1 us, and in Lua a
-- table ~0.3 us and a string-to-number conversion ~0.2 us. So the hot path is TIME, one HMGET
-- (the next expiry, the cursor under rr, each key's mark and count), one HINCRBY (the bucket)
-- and one HSET; it builds one table of its own (the field list), converts a key's rpm only
-- when its count has as many digits, and answers with a single number. The rest is paid
-- rarely: moving expired buckets out of `n` (once a second for the whole pool, when `x` is
-- due) and finding when a full key frees up (once per full period, in `f:<fp>`).
local strategy = ARGV[1]
local call = tonumber(ARGV[2])
local tried = ARGV[3]
local rr = strategy == 'rr'
local n = (#ARGV - 3) / 2
if strategy == 'w' then n = (#ARGV - 3) / 3 end
local state, buckets = KEYS[1], KEYS[2]
-- Redis keeps a small hash as a listpack, which it searches field by field: a bucket hash of a
-- minute's seconds would cost microseconds per lookup. A value over 64 bytes makes it a hash
-- table for good, with constant-time lookups; both hashes carry one, in field '_'.
local TABLE = 'keyrelay: this value is longer than 64 bytes so that Redis keeps the hash a hash table'
local t = redis.call('TIME')
local secs = t[1]
local sec = tonumber(secs)
local now -- milliseconds, computed when a mark or a full key needs it

-- vals[1]: x; vals[2]: rr (rr only); then per key i: mark at m0 + 2i, count at m0 + 2i + 1.
-- The list is made by copying as many ARGV entries as it needs fields (one allocation at its
-- final size, where growing it would reallocate it three times), then overwritten.
local fields, m0
if rr then
  fields = {unpack(ARGV, 2, 3 + 2 * n)}
  fields[2] = 'rr'
  m0 = 3
else
  fields = {unpack(ARGV, 3, 3 + 2 * n)}
  m0 = 2
end
fields[1] = 'x'
for i = 0, n - 1 do
  local fp = ARGV[4 + 2 * i]
  fields[m0 + 2 * i] = 'm:' .. fp
  fields[m0 + 2 * i + 1] = 'n:' .. fp
end
local vals = redis.call('HMGET', state, unpack(fields))
-- Writes to the state hash besides the count, made on the rare paths.
local writes, w = nil, 0

-- x: the second at which some key's oldest bucket leaves the window (absent: none).
local due = vals[1] and tonumber(vals[1]) or 0
if due > 0 and due <= sec then
  -- Move expired buckets out of every key's count (into its total), and find the next due.
  writes = {}
  local next_due = 0
  for i = 0, n - 1 do
    local fp = ARGV[4 + 2 * i]
    local ot = redis.call('HMGET', state, 'o:' .. fp, 't:' .. fp)
    local oldest = tonumber(ot[1]) or 0
    if oldest > 0 and oldest <= sec - 61 then
      -- Buckets of a key lie within 60 s of its oldest one. When all of them have left the
      -- window, its whole count goes (the bucket hash may have expired already).
      local count = tonumber(vals[m0 + 2 * i + 1]) or 0
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
      vals[m0 + 2 * i + 1] = used
      writes[w + 1] = fields[m0 + 2 * i + 1]; writes[w + 2] = used
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

local cursor
if rr then
  cursor = (tonumber(vals[2]) or 0) % n
else
  cursor = call % n
end
local by_share = strategy == 'll' or strategy == 'w'
local best, best_used, best_den
local wait = -1
local any_tried = tried ~= ','
for j = 0, n - 1 do
  local i = (cursor + j) % n
  if not (any_tried and string.find(tried, ',' .. i .. ',', 1, true)) then
    local mark = vals[m0 + 2 * i]
    local ready_in, disabled = 0, false
    if mark then
      local until_ms, kind = string.match(mark, '^(%d+)|(%a+)')
      if kind == 'disabled' then
        disabled = true
      elseif until_ms then
        now = now or sec * 1000 + math.floor(tonumber(t[2]) / 1000)
        ready_in = math.max(0, tonumber(until_ms) - now)
      end
    end
    if not disabled then
      local rpm_s = ARGV[5 + 2 * i]
      local count = vals[m0 + 2 * i + 1]
      local used = count and tonumber(count) or 0
      -- A count with fewer digits than the rpm is below it, with no conversion of the rpm.
      if count and (type(count) ~= 'string' or #count >= #rpm_s) and used >= tonumber(rpm_s) then
        -- Full: f:<fp> holds when it frees up, unless that has passed and must be found again.
        local rpm = tonumber(rpm_s)
        local fp = ARGV[4 + 2 * i]
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
          best, best_used = i, used
          break
        end
        if by_share then
          local den
          if strategy == 'w' then den = tonumber(ARGV[3 + 2 * n + 1 + i]) else den = tonumber(rpm_s) end
          if best == nil or used * best_den < best_used * den then
            best, best_used, best_den = i, used, den
          end
        elseif best == nil or used < best_used then
          best, best_used = i, used
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

local fp = ARGV[4 + 2 * best]
-- A new bucket (the first request of this second for this key) renews the hash's TTL.
if redis.call('HINCRBY', buckets, fp .. ':' .. secs, '1') == 1 then
  redis.call('HSETNX', buckets, '_', TABLE)
  redis.call('PEXPIRE', buckets, '125000')
end
local first = best_used == 0
if first or rr or w > 0 then
  writes = writes or {}
  writes[w + 1] = fields[m0 + 2 * best + 1]; writes[w + 2] = best_used + 1
  w = w + 2
  if first then
    -- No live bucket before this one: it is the key's oldest, and may be the next to expire.
    writes[w + 1] = 'o:' .. fp; writes[w + 2] = secs
    w = w + 2
    if due <= 0 or sec + 61 < due then
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
  redis.call('HSET', state, fields[m0 + 2 * best + 1], best_used + 1)
end
if first or call % 64 == 0 then
  redis.call('HSETNX', state, '_', TABLE)
  -- A day from now, unless a mark already asked for longer (GT never shortens; it does not
  -- apply to a key without a TTL, hence the second call).
  redis.call('PEXPIRE', state, '86400000', 'GT')
  if redis.call('PTTL', state) < 0 then redis.call('PEXPIRE', state, '86400000') end
end
return best + 1
