-- Store a record (incomplete) and reference its digests, replacing a record of the same key.
-- KEYS: record, digest set, all records, run's records, then n_old refcount keys (the old
--       record's digests), then n_new refcount keys, then n_new tombstone keys
-- ARGV: n_old, n_new, old digests (n_old), new digests (n_new), then field, value pairs
-- Returns {REPLY_OK, tombstoned digest...} | {REPLY_ERR, ERR_KEYS} (the old digest set changed: re-read)
local n_old, n_new = tonumber(ARGV[1]), tonumber(ARGV[2])
local first_old, first_new = 3, 3 + n_old
if not same_members(KEYS[2], first_old, n_old) then return {REPLY_ERR, ERR_KEYS} end
release(first_old, n_old)

local first_field = first_new + n_new
for i = first_field, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local new_refs = FIRST_REF + n_old
local result = {REPLY_OK}
for i = 0, n_new - 1 do
  local digest = ARGV[first_new + i]
  redis.call('SADD', KEYS[2], digest)
  redis.call('INCR', KEYS[new_refs + i])
  if redis.call('EXISTS', KEYS[new_refs + n_new + i]) == 1 then
    result[#result + 1] = digest
  end
end
redis.call('SADD', KEYS[3], KEYS[1])
redis.call('SADD', KEYS[4], KEYS[1])
return result
