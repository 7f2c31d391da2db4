-- Set a cooldown or quarantine mark unless a longer one (or an operator's disable) is in place.
-- KEYS[1]: the key's mark. ARGV: value ("cooling:<reason>" or "quarantined:<reason>"), period ms.
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then return 0 end
if ttl < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
