-- Every key's state, read-only. KEYS as for acquire.lua; ARGV: n, then the fingerprints.
-- Returns per key {used this minute, mark value or '', mark ttl ms, total}.
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 0, n - 1 do
  local used = redis.call('ZCOUNT', KEYS[i + 1], '(' .. (now - 60000), '+inf')
  local mark = redis.call('GET', KEYS[n + i + 1]) or ''
  local ttl = redis.call('PTTL', KEYS[n + i + 1])
  local total = redis.call('HGET', KEYS[2 * n + 2], ARGV[2 + i]) or '0'
  out[#out + 1] = {used, mark, ttl, tonumber(total)}
end
return out
