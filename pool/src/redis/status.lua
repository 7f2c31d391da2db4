-- status.lua: every key's state, read-only. common.lua comes first.
--
-- KEYS[1]  the pool's state hash     keyrelay:{<pool>}:state
-- KEYS[2]  the pool's bucket hash    keyrelay:{<pool>}:b
-- KEYS[3]  the pool's operator hash  keyrelay:{<pool>}:ops
--
-- ARGV[1 .. n]  the keys' fingerprints, in the pool's order
--
-- Returns per key {used this minute, mark as stored (`<until_ms>|<kind>|<since_ms>|<reason>`,
-- or ''), ms the mark still runs, total requests}. A key's count `n:<fp>` may still hold
-- buckets that left the window since acquire.lua last moved them out; they are taken off here,
-- and stay in the total (`t:<fp>` + `n:<fp>`). A disable is read from the operator hash, the
-- truth, even while the state hash's mirror of it is missing (expired, not yet restored).
local state, buckets, ops = KEYS[1], KEYS[2], KEYS[3]
local time = redis.call('TIME')
local sec, now = tonumber(time[1]), now_ms(time)
if #ARGV == 0 then return {} end
local acts = redis.call('HMGET', ops, unpack(ARGV))
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
  local mark = v[1] or ''
  local at, act = string.match(acts[i] or '', '^(%d+)|(%a+)$')
  if act == 'disabled' then
    mark = '0|disabled|' .. at .. '|manual'
  elseif act == 'enabled' and select(2, parse_mark(v[1])) == 'disabled' then
    mark = ''
  end
  local left = 0
  local until_ms = parse_mark(mark)
  if until_ms then left = math.max(0, until_ms - now) end
  out[i] = {math.max(0, used), mark, left, (tonumber(v[4]) or 0) + count}
end
return out
