-- Pick a key for one attempt, count it, and answer in one round trip.
-- KEYS: n window zsets, n mark strings, round-robin cursor, totals hash, member sequence.
-- ARGV: n, strategy (ll|rr|w), then per key rpm, weight, fingerprint; last the tried list ",0,2,".
-- Returns {1, index} (counted), {0, wait_ms} (none ready yet), or {2, 0} (nothing can serve).
local n = tonumber(ARGV[1])
local strategy = ARGV[2]
local tried = ARGV[3 * n + 3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local cursor = tonumber(redis.call('GET', KEYS[2 * n + 1]) or '0') % n
local best, best_num, best_den
local wait = -1
for j = 0, n - 1 do
  local i = (cursor + j) % n
  if not string.find(tried, ',' .. i .. ',', 1, true) then
    local wkey = KEYS[i + 1]
    local ttl = redis.call('PTTL', KEYS[n + i + 1])
    -- A mark with no expiry is an operator's disable: never ready, never waited for.
    if ttl ~= -1 then
      local rpm = tonumber(ARGV[3 + 3 * i])
      local weight = tonumber(ARGV[4 + 3 * i])
      redis.call('ZREMRANGEBYSCORE', wkey, '-inf', now - window)
      local used = redis.call('ZCARD', wkey)
      local ready_in = 0
      if ttl > 0 then ready_in = ttl end
      if used >= rpm then
        local oldest = redis.call('ZRANGE', wkey, used - rpm, used - rpm, 'WITHSCORES')
        local free_in = tonumber(oldest[2]) + window - now
        if free_in > ready_in then ready_in = free_in end
      end
      if ready_in <= 0 then
        local num, den = used, rpm
        if strategy == 'rr' then
          num, den = 0, 1
        elseif strategy == 'w' then
          den = weight
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
local seq = redis.call('INCR', KEYS[2 * n + 3])
redis.call('PEXPIRE', KEYS[2 * n + 3], 86400000)
redis.call('ZADD', KEYS[best + 1], now, now .. ':' .. seq)
redis.call('PEXPIRE', KEYS[best + 1], window + 1000)
redis.call('SET', KEYS[2 * n + 1], (best + 1) % n, 'PX', 86400000)
redis.call('HINCRBY', KEYS[2 * n + 2], ARGV[5 + 3 * best], 1)
redis.call('PEXPIRE', KEYS[2 * n + 2], 86400000)
return {1, best}
