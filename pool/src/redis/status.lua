-- Every key's state, read-only. KEYS as for acquire.lua; ARGV: n, then the fingerprints.
-- Returns per key {used this minute, mark ("<until_ms>|<kind>|<reason>" or ''), ms left, total}.
-- A key's count `n:<fp>` may still hold buckets that left the window since acquire.lua last
-- moved them out; they are taken off here, and stay in the total (`t:<fp>` + `n:<fp>`).
local n = tonumber(ARGV[1])
local state, buckets = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 0, n - 1 do
  local fp = ARGV[2 + i]
  local v = redis.call('HMGET', state, 'm:' .. fp, 'n:' .. fp, 'o:' .. fp, 't:' .. fp)
  local mark = v[1] or ''
  local count = tonumber(v[2]) or 0
  local used = count
  local oldest = tonumber(v[3]) or 0
  if oldest > 0 and oldest + 60 <= sec - 61 then
    used = 0
  elseif oldest > 0 and oldest <= sec - 61 then
    local names = {}
    for s = oldest, math.min(sec - 61, oldest + 60) do names[#names + 1] = fp .. ':' .. s end
    for _, c in ipairs(redis.call('HMGET', buckets, unpack(names))) do
      used = used - (tonumber(c) or 0)
    end
  end
  local left = 0
  local until_ms = string.match(mark, '^(%d+)|')
  if until_ms then left = math.max(0, tonumber(until_ms) - now) end
  out[#out + 1] = {math.max(0, used), mark, left, (tonumber(v[4]) or 0) + count}
end
return out
