-- mark.lua: put a cooldown or quarantine on one key, in the pool's state hash. common.lua comes
-- first. An operator's disable, enable and reset are act.lua's.
--
-- KEYS[1]  the pool's state hash   keyrelay:{<pool>}:state
--
-- ARGV[1]  the key's fingerprint (its mark is field `m:<fp>`, see parse_mark)
-- ARGV[2]  kind: cooling | quarantined (kept out if a longer penalty or a disable is in place)
-- ARGV[3]  reason, stored with the mark
-- ARGV[4]  period in ms
--
-- The fingerprint is published on `keyrelay:{<pool>}:ev`, so instances drop their leases on it.
--
-- Returns 1, or 0 when the mark was kept out by a longer one or a disable.
-- Field `mk` is raised to the new mark's end, so acquire.lua reads the marks only while one may
-- be in force; it brings `mk` down again itself.
local state = KEYS[1]
local field, kind, reason, period = 'm:' .. ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms(redis.call('TIME'))
local cur_until, cur_kind = parse_mark(redis.call('HGET', state, field))
local ends = now + period
-- Every instance holding a lease on the key drops it at once (shares.rs): `keyrelay:{p}:ev`.
redis.call('PUBLISH', string.sub(state, 1, -6) .. 'ev', ARGV[1])
if cur_kind == 'disabled' or (cur_until or 0) >= ends then return 0 end
local mk = tonumber(redis.call('HGET', state, 'mk')) or 0
redis.call('HSET', state, field, ends .. '|' .. kind .. '|' .. now .. '|' .. reason,
  'mk', math.max(mk, ends))
-- The mark must outlive its period, and the state hash lives a day past its use anyway.
keep(state, math.max(STATE_TTL_MS, period + 1000))
return 1
