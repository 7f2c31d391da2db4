-- mark.lua: change one key's mark in the pool's state hash. common.lua comes first.
--
-- KEYS[1]  the pool's state hash   keyrelay:{<pool>}:state
--
-- ARGV[1]  the key's fingerprint (its mark is field `m:<fp>`, see parse_mark)
-- ARGV[2]  action: cooling | quarantined (kept if a longer penalty or a disable is in place),
--          disabled (until enabled), enable (clears a disable), reset (clears a cooldown or
--          quarantine)
-- ARGV[3]  reason, stored with the mark
-- ARGV[4]  period in ms (cooling and quarantined; 0 for the others)
--
-- Returns 1, or 0 when a cooldown or quarantine was kept out by a longer mark.
-- Field `mk` is raised to the new mark's end (a disable: FOREVER), so acquire.lua reads the
-- marks only while one may be in force; it brings `mk` down again itself.
local state = KEYS[1]
local field, action, reason, period = 'm:' .. ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms(redis.call('TIME'))
local cur = redis.call('HGET', state, field)
local cur_until, cur_kind = parse_mark(cur)
if action == 'enable' then
  if cur_kind == 'disabled' then redis.call('HDEL', state, field) end
  return 1
elseif action == 'reset' then
  if cur and cur_kind ~= 'disabled' then redis.call('HDEL', state, field) end
  return 1
elseif action == 'disabled' then
  redis.call('HSET', state, field, '0|disabled|' .. reason, 'mk', FOREVER)
else
  local ends = now + period
  if cur_kind == 'disabled' or (cur_until or 0) >= ends then return 0 end
  local mk = tonumber(redis.call('HGET', state, 'mk')) or 0
  redis.call('HSET', state, field, ends .. '|' .. action .. '|' .. reason, 'mk', math.max(mk, ends))
end
-- The mark must outlive its period, and the state hash lives a day past its use anyway.
keep(state, math.max(STATE_TTL_MS, period + 1000))
return 1
