-- Remove a record and drop one reference from each of its digests.
-- KEYS: record, digest set, all records, run's records, then one refcount key per digest
-- ARGV: the record's digests, as the caller read them from KEYS[2]
-- Returns {REPLY_OK, digest whose count reached zero...} | {REPLY_ERR, ERR_KEYS}
if not same_members(KEYS[2], 1, #ARGV) then return {REPLY_ERR, ERR_KEYS} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {REPLY_OK} end
local result = {REPLY_OK}
for _, digest in ipairs(release(1, #ARGV)) do result[#result + 1] = digest end
return result
