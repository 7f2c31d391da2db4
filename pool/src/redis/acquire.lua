-- Pick a key for one attempt, count it, and answer, in one round trip.
-- KEYS: the pool's state hash, then its bucket hash.
-- ARGV: n, strategy (ll|rr|w), a rotation start for ll/w ties, housekeeping (1: also refresh
--       the state hash's TTL), the tried list (",0,2,"), 'rr', 'x', then per key its state
--       fields 'm:<fp>' and 'n:<fp>', then per key its rpm, weight and fingerprint.
-- Returns {1, index} (counted), {0, wait_ms} (none ready yet), or {2, 0} (nothing can serve).
--
-- Windows are per-second buckets (`<fp>:<second>` in the bucket hash), with each key's live
-- total kept in `n:<fp>`. A bucket counts until its whole second has left the minute, so a
-- window spans at most 61 s and a key never takes more than its rpm in any 60 s.
--
-- Every redis.call, table and number-to-string costs about a microsecond of Redis time, so the
-- hot path is TIME, one HMGET (the cursor, the next expiry, and each key's mark and count),
-- one HINCRBY (the bucket) and one HSET. The rest is paid rarely: moving expired buckets out
-- of `n` (once a second for the whole pool, when `x` is due) and finding when a full key frees
-- up (once per full period, kept in `f:<fp>`).
local n = tonumber(ARGV[1])
local strategy = ARGV[2]
local tried = ARGV[5]
local state, buckets = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local vals = redis.call('HMGET', state, unpack(ARGV, 6, 7 + 2 * n))
local per = 8 + 2 * n
local writes, w = {}, 0

-- The bucket names of key fp for seconds from..to.
local function names_of(fp, from, to)
  local names = {}
  for s = from, to do names[#names + 1] = fp .. ':' .. s end
  return names
end

-- x: the second at which some key's oldest bucket leaves the window (0 or absent: none).
local due = tonumber(vals[2]) or 0
if due > 0 and due <= sec then
  -- Move expired buckets out of every key's count (into its total), and find the next due.
  local next_due = 0
  for i = 0, n - 1 do
    local fp = ARGV[per + 2 + 3 * i]
    local ot = redis.call('HMGET', state, 'o:' .. fp, 't:' .. fp)
    local oldest = tonumber(ot[1]) or 0
    if oldest > 0 and oldest <= sec - 61 then
      -- Buckets of a key lie within 60 s of its oldest one. When all of them have left the
      -- window, its whole count goes (the bucket hash may have expired already).
      local count = tonumber(vals[4 + 2 * i]) or 0
      local names = names_of(fp, oldest, math.min(sec - 61, oldest + 60))
      local dropped = count
      if oldest + 60 > sec - 61 then
        dropped = 0
        local got = redis.call('HMGET', buckets, unpack(names))
        for k = 1, #names do dropped = dropped + (tonumber(got[k]) or 0) end
      end
      redis.call('HDEL', buckets, unpack(names))
      local used = math.max(0, count - dropped)
      if used > 0 then oldest = sec - 60 else oldest = 0 end
      vals[4 + 2 * i] = used
      writes[w + 1] = ARGV[9 + 2 * i]; writes[w + 2] = used
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
if strategy == 'rr' then
  cursor = (tonumber(vals[1]) or 0) % n
else
  cursor = tonumber(ARGV[3]) % n
end
local best, best_num, best_den
local wait = -1
local any_tried = tried ~= ','
for j = 0, n - 1 do
  local i = (cursor + j) % n
  if not (any_tried and string.find(tried, ',' .. i .. ',', 1, true)) then
    local mark = vals[3 + 2 * i]
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
      local a = per + 3 * i
      local rpm = tonumber(ARGV[a])
      local used = tonumber(vals[4 + 2 * i]) or 0
      if used >= rpm then
        -- Full: f:<fp> holds when it frees up, unless that has passed and must be found again.
        local fp = ARGV[a + 2]
        local of = redis.call('HMGET', state, 'o:' .. fp, 'f:' .. fp)
        local full = tonumber(of[2]) or 0
        if full <= now then
          local from = tonumber(of[1]) or 0
          if from <= 0 then from = sec end
          local names = names_of(fp, from, sec)
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
          writes[w + 1] = 'f:' .. fp; writes[w + 2] = full
          w = w + 2
        end
        ready_in = math.max(ready_in, full - now)
      end
      if ready_in <= 0 then
        local num, den = used, rpm
        if strategy == 'rr' then
          num, den = 0, 1
        elseif strategy == 'w' then
          den = tonumber(ARGV[a + 1])
        end
        if best == nil or num * best_den < best_num * den then
          best, best_num, best_den = i, num, den
        end
      elseif wait < 0 or ready_in < wait then
        wait = ready_in
      end
    end
  end
end

local first = false
if best ~= nil then
  local fp = ARGV[per + 2 + 3 * best]
  local used = tonumber(vals[4 + 2 * best]) or 0
  -- A new bucket (the first request of this second for this key) renews the hash's TTL.
  if redis.call('HINCRBY', buckets, fp .. ':' .. sec, 1) == 1 then
    redis.call('PEXPIRE', buckets, 125000)
  end
  writes[w + 1] = ARGV[9 + 2 * best]; writes[w + 2] = used + 1
  w = w + 2
  if used == 0 then
    -- No live bucket before this one: it is the key's oldest, and may be the next to expire.
    first = true
    writes[w + 1] = 'o:' .. fp; writes[w + 2] = sec
    w = w + 2
    if due <= 0 or sec + 61 < due then
      writes[w + 1] = 'x'; writes[w + 2] = sec + 61
      w = w + 2
    end
  end
  if strategy == 'rr' then
    writes[w + 1] = 'rr'; writes[w + 2] = (best + 1) % n
    w = w + 2
  end
end
if w > 0 then redis.call('HSET', state, unpack(writes)) end
if first or ARGV[4] == '1' then
  -- A day from now, unless a mark already asked for longer (GT never shortens; it does not
  -- apply to a key without a TTL, hence the second call).
  redis.call('PEXPIRE', state, 86400000, 'GT')
  if redis.call('PTTL', state) < 0 then redis.call('PEXPIRE', state, 86400000) end
end
if best == nil then
  if wait < 0 then return {2, 0} end
  return {0, wait}
end
return {1, best}
