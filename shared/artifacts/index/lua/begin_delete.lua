-- Tombstone an unreferenced digest. KEYS: refcount, tombstone, present mark. ARGV: ttl_ms.
-- Returns 1 (tombstoned; no longer present) or 0 (referenced: leave the object alone).
local count = tonumber(redis.call('GET', KEYS[1])) or 0
if count > 0 then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
redis.call('DEL', KEYS[3])
return 1
