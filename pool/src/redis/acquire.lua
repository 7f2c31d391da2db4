-- Pick a key for one attempt, count it, and answer, in one round trip.
-- KEYS: n window zsets, then the pool's state hash.
-- ARGV: n, strategy (ll|rr|w), a unique request nonce, a rotation start for ll/w ties,
--       trim (1: also drop expired window entries), then per key rpm, weight, mark field
--       ("m:<fingerprint>"), total field ("t:<fingerprint>"); last the tried list (",0,2,").
-- Returns {1, index} (counted), {0, wait_ms} (none ready yet), or {2, 0} (nothing can serve).
--
-- Each redis.call costs about a microsecond of Redis time, so the hot path keeps them few:
-- one HMGET for every mark (and the round-robin cursor), one ZCOUNT per untried key, and three
-- writes for the chosen key (four for round-robin). Expired window entries are never counted
-- by ZCOUNT, so trimming them, like refreshing the state hash's day-long TTL, is housekeeping
-- done on the share of calls the caller flags.
local n = tonumber(ARGV[1])
local strategy = ARGV[2]
local tried = ARGV[4 * n + 6]
local state = KEYS[n + 1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local since = '(' .. (now - window)
local fields = {'rr'}
for i = 0, n - 1 do fields[i + 2] = ARGV[8 + 4 * i] end
local vals = redis.call('HMGET', state, unpack(fields))
local cursor
if strategy == 'rr' then
  cursor = (tonumber(vals[1]) or 0) % n
else
  cursor = tonumber(ARGV[4]) % n
end
local best, best_num, best_den
local wait = -1
for j = 0, n - 1 do
  local i = (cursor + j) % n
  if not string.find(tried, ',' .. i .. ',', 1, true) then
    local mark = vals[i + 2]
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
      local rpm = tonumber(ARGV[6 + 4 * i])
      local used = redis.call('ZCOUNT', KEYS[i + 1], since, '+inf')
      if used >= rpm then
        -- The request that must leave the window before one more fits.
        local oldest = redis.call('ZRANGEBYSCORE', KEYS[i + 1], since, '+inf', 'WITHSCORES', 'LIMIT', used - rpm, 1)
        ready_in = math.max(ready_in, tonumber(oldest[2]) + window - now)
      end
      if ready_in <= 0 then
        local num, den = used, rpm
        if strategy == 'rr' then
          num, den = 0, 1
        elseif strategy == 'w' then
          den = tonumber(ARGV[7 + 4 * i])
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
if best == nil then
  if wait < 0 then return {2, 0} end
  return {0, wait}
end
local w = KEYS[best + 1]
redis.call('ZADD', w, now, ARGV[3])
redis.call('PEXPIRE', w, window + 1000)
if strategy == 'rr' then
  redis.call('HSET', state, 'rr', (best + 1) % n)
end
-- A first count for this key may mean a new hash: give it its TTL now, not at the next trim.
local fresh = redis.call('HINCRBY', state, ARGV[9 + 4 * best], 1) == 1
if ARGV[5] == '1' then
  redis.call('ZREMRANGEBYSCORE', w, '-inf', now - window)
end
if fresh or ARGV[5] == '1' then
  -- A day from now, unless a mark already asked for longer (GT never shortens; it does not
  -- apply to a key without a TTL, hence the second call).
  redis.call('PEXPIRE', state, 86400000, 'GT')
  if redis.call('PTTL', state) < 0 then redis.call('PEXPIRE', state, 86400000) end
end
return {1, best}
