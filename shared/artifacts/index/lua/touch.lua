-- Record a download. KEYS: record. ARGV: at (epoch seconds, as Python wrote it).
-- The time only moves forward: a slow download reporting late must not make the record
-- look less recently used. The string is stored as given so no precision is lost.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local current = tonumber(redis.call('HGET', KEYS[1], 'last_access'))
if current == nil or tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'last_access', ARGV[1])
end
return 1
