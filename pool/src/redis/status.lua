-- Every key's state, read-only. KEYS as for acquire.lua; ARGV: n, then the fingerprints.
-- Returns per key {used this minute, mark ("<until_ms>|<kind>|<reason>" or ''), ms left, total}.
local n = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 0, n - 1 do
  local fp = ARGV[2 + i]
  local used = redis.call('ZCOUNT', KEYS[i + 1], '(' .. (now - 60000), '+inf')
  local mark = redis.call('HGET', KEYS[n + 1], 'm:' .. fp) or ''
  local left = 0
  local until_ms = string.match(mark, '^(%d+)|')
  if until_ms then left = math.max(0, tonumber(until_ms) - now) end
  local total = redis.call('HGET', KEYS[n + 1], 't:' .. fp) or '0'
  out[#out + 1] = {used, mark, left, tonumber(total)}
end
return out
