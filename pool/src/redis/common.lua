-- common.lua: the constants and arithmetic every keyrelay script shares. The store puts this
-- file in front of each script when it builds it (command.rs), so a call still runs one
-- script. Times are Redis's (TIME), the same clock for every instance.
--
-- Every function here is made anew on each script call (Lua 5.1 has no cached closures):
-- ~0.8k instructions each on acquire's hot path (bench/lua-cost.sh). Add one only for what more
-- than one script needs.

-- A key's window is its per-second buckets of the last BUCKETS whole seconds: a bucket counts
-- until all of its second has left the WINDOW_S-second minute, so no key takes more than its
-- rpm in any minute (and at least 60/61 of it).
local WINDOW_S = 60
local BUCKETS = WINDOW_S + 1
-- The state hash lives a day past its last new bucket (longer while a mark needs it).
local STATE_TTL_MS = 86400000
-- The bucket hash lives past its newest bucket as long as a bucket may still be read: a key's
-- buckets lie within WINDOW_S of its oldest, which is read until it has left the window
-- (BUCKETS): 121 s, and a margin.
local BUCKET_TTL_MS = 125000
-- The end of a disable, which has none: the largest integer a Lua number holds exactly.
local FOREVER = '9007199254740991'
-- Redis keeps a small hash as a listpack and finds a field by walking it: over a minute of
-- buckets that costs microseconds per lookup. A value longer than 64 bytes
-- (hash-max-listpack-value) makes the hash a hash table for good, with constant-time lookups,
-- so both hashes carry this one, in field '_'.
local TABLE = 'keyrelay: this value is longer than 64 bytes so that Redis keeps the hash a hash table'

-- Milliseconds from a TIME answer {seconds, microseconds}.
local function now_ms(time)
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- The bucket-hash field counting key `fp`'s requests in second `sec`.
local function bucket(fp, sec)
  return fp .. ':' .. sec
end

-- The buckets of key `fp` that have left the window by second `sec`, given its oldest live
-- bucket's second (0: none): their names, and whether that is all of its buckets (they lie
-- within WINDOW_S of the oldest). Nothing when none has left yet.
local function expired(fp, oldest, sec)
  if oldest <= 0 or oldest + BUCKETS > sec then return nil end
  local names = {}
  for s = oldest, math.min(sec - BUCKETS, oldest + WINDOW_S) do
    names[#names + 1] = bucket(fp, s)
  end
  return names, oldest + WINDOW_S + BUCKETS <= sec
end

-- A key's mark, kept in state field `m:<fp>` as `<until_ms>|<kind>|<since_ms>|<reason>`: kind
-- cooling or quarantined until until_ms, or disabled (until_ms 0: until enabled); since_ms is
-- when it was set, so an operator's reset only clears marks older than itself (a mark written
-- before since_ms existed, `<until_ms>|<kind>|<reason>`, reads as set at 0). Returns until_ms
-- (a number), kind, reason and since_ms (a number); nothing for no mark (HGET answers false).
local function parse_mark(text)
  if not text then return nil end
  local until_ms, kind, rest = string.match(text, '^(%d+)|(%a+)|(.*)$')
  if not kind then return nil end
  local since, reason = string.match(rest, '^(%d+)|(.*)$')
  if since then return tonumber(until_ms), kind, reason, tonumber(since) end
  return tonumber(until_ms), kind, rest, 0
end

-- Make `key` live at least `ms` more; a longer TTL (a mark's) is kept.
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

