-- Take a lock. KEYS: lock. ARGV: owner, ttl_ms. Returns 1, or 0 when another owner holds it.
-- The holder asking again extends its lease: a long collection renews as it goes.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
