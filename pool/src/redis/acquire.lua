-- Pick a key for one attempt, count it, and answer, in one round trip.
-- KEYS: n window zsets, then the pool's state hash.
-- ARGV: n, strategy (ll|rr|w), a unique request nonce, then per key rpm, weight, fingerprint;
--       last the tried list (",0,2,").
-- Returns {1, index} (counted), {0, wait_ms} (none ready yet), or {2, 0} (nothing can serve).
local n = tonumber(ARGV[1])
local strategy = ARGV[2]
local tried = ARGV[3 * n + 4]
local state = KEYS[n + 1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local since = '(' .. (now - window)
local fields = {'rr'}
for i = 0, n - 1 do fields[i + 2] = 'm:' .. ARGV[6 + 3 * i] end
local vals = redis.call('HMGET', state, unpack(fields))
local cursor = (tonumber(vals[1]) or 0) % n
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
      local rpm = tonumber(ARGV[4 + 3 * i])
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
          den = tonumber(ARGV[5 + 3 * i])
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
redis.call('ZREMRANGEBYSCORE', w, '-inf', now - window)
redis.call('ZADD', w, now, ARGV[3])
redis.call('PEXPIRE', w, window + 1000)
redis.call('HSET', state, 'rr', (best + 1) % n)
redis.call('HINCRBY', state, 't:' .. ARGV[6 + 3 * best], 1)
if redis.call('PTTL', state) < 86400000 then redis.call('PEXPIRE', state, 86400000) end
return {1, best}
