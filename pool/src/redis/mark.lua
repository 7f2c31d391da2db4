-- Change one key's mark in the pool's state hash.
-- KEYS[1]: the state hash. ARGV: field ("m:<fingerprint>"), action, reason, period ms.
-- Actions: cooling / quarantined (kept if a longer penalty or a disable is in place),
-- disabled (until enabled), enable (clears a disable), reset (clears a cooldown or quarantine).
-- Field `mk` is raised to the new mark's end (a disable: FOREVER), so acquire.lua reads the
-- marks only while one may be in force; it brings `mk` down again itself.
local field, action, reason, period = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local FOREVER = '9007199254740991'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HGET', KEYS[1], field)
local cur_until, cur_kind = 0, nil
if cur then
  local u, k = string.match(cur, '^(%d+)|(%a+)')
  cur_until, cur_kind = tonumber(u) or 0, k
end
if action == 'enable' then
  if cur_kind == 'disabled' then redis.call('HDEL', KEYS[1], field) end
  return 1
elseif action == 'reset' then
  if cur and cur_kind ~= 'disabled' then redis.call('HDEL', KEYS[1], field) end
  return 1
elseif action == 'disabled' then
  redis.call('HSET', KEYS[1], field, '0|disabled|' .. reason, 'mk', FOREVER)
else
  if cur_kind == 'disabled' or cur_until >= now + period then return 0 end
  local mk = tonumber(redis.call('HGET', KEYS[1], 'mk')) or 0
  redis.call('HSET', KEYS[1], field, (now + period) .. '|' .. action .. '|' .. reason,
    'mk', math.max(mk, now + period))
end
local keep = math.max(86400000, period + 1000)
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
return 1
