-- status.lua: every key's state, read-only. common.lua comes first.
--
-- KEYS[1]  the pool's state hash    keyrelay:{<pool>}:state
-- KEYS[2]  the pool's bucket hash   keyrelay:{<pool>}:b
--
-- ARGV[1 .. n]  the keys' fingerprints, in the pool's order
--
-- Returns per key {used this minute, mark as stored (`<until_ms>|<kind>|<reason>`, or ''),
-- ms the mark still runs, total requests}. A key's count `n:<fp>` may still hold buckets that
-- left the window since acquire.lua last moved them out; they are taken off here, and stay in
-- the total (`t:<fp>` + `n:<fp>`).
local state, buckets = KEYS[1], KEYS[2]
local time = redis.call('TIME')
local sec, now = tonumber(time[1]), now_ms(time)
local out = {}
for i, fp in ipairs(ARGV) do
  local v = redis.call('HMGET', state, 'm:' .. fp, 'n:' .. fp, 'o:' .. fp, 't:' .. fp)
  local count = tonumber(v[2]) or 0
  local used = count
  local names, all = expired(fp, tonumber(v[3]) or 0, sec)
  if all then
    used = 0
  elseif names then
    for _, c in ipairs(redis.call('HMGET', buckets, unpack(names))) do
      used = used - (tonumber(c) or 0)
    end
  end
  local left = 0
  local until_ms = parse_mark(v[1])
  if until_ms then left = math.max(0, until_ms - now) end
  out[i] = {math.max(0, used), v[1] or '', left, (tonumber(v[4]) or 0) + count}
end
return out
