-- act.lua: an operator's disable, enable or reset of one key, last writer by time winning.
-- common.lua comes first.
--
-- KEYS[1]  the pool's state hash     keyrelay:{<pool>}:state
-- KEYS[2]  the pool's operator hash  keyrelay:{<pool>}:ops   (no TTL)
--
-- ARGV[1]  the key's fingerprint
-- ARGV[2]  action: disable | enable | reset
-- ARGV[3]  when the operator acted: Unix ms on the clock of the instance that answered them
--
-- Disable and enable are kept in the operator hash, field `<fp>` = `<at_ms>|disabled` or
-- `<at_ms>|enabled`, which never expires: it is the truth. The state hash mirrors a disable as
-- the mark `0|disabled|<at_ms>|manual` (with `mk` at FOREVER), so acquire.lua finds it among
-- the marks it reads anyway; when the state hash expired, acquire.lua restores the mirror (see
-- there). An action older than the one stored is ignored: an instance that queued it during an
-- outage never undoes a newer action taken elsewhere. A reset clears a cooldown or quarantine
-- set before it (never a disable), so a queued reset spares a newer mark.
--
-- Returns 1 when applied, 0 when a newer action (or, for a reset, a newer mark) stands.
local state, ops = KEYS[1], KEYS[2]
local fp, action, at = ARGV[1], ARGV[2], tonumber(ARGV[3])
local field = 'm:' .. fp
local _, kind, _, since = parse_mark(redis.call('HGET', state, field))
if action == 'reset' then
  if not kind or kind == 'disabled' then return 1 end
  if since > at then return 0 end
  redis.call('HDEL', state, field)
  return 1
end
local cur = redis.call('HGET', ops, fp)
local cur_at = 0
if cur then cur_at = tonumber(string.match(cur, '^(%d+)|') or '0') end
if cur_at > at then return 0 end
if action == 'disable' then
  -- Every instance holding a lease on the key drops it at once (shares.rs).
  redis.call('PUBLISH', string.sub(state, 1, -6) .. 'ev', fp)
  redis.call('HSET', ops, fp, ARGV[3] .. '|disabled')
  redis.call('HSET', state, field, '0|disabled|' .. ARGV[3] .. '|manual', 'mk', FOREVER)
  keep(state, STATE_TTL_MS)
else
  redis.call('HSET', ops, fp, ARGV[3] .. '|enabled')
  if kind == 'disabled' then redis.call('HDEL', state, field) end
end
return 1
