-- Extend the lease of the current attempt.
-- KEYS: run, jobs, lease
-- ARGV: job, token, lease_ms
-- Returns HEARTBEAT_OK, HEARTBEAT_LOST (token no longer current) or HEARTBEAT_CANCEL (lease
-- extended; stop soon).
if redis.call('EXISTS', KEYS[1]) == 0 then return HEARTBEAT_LOST end
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return HEARTBEAT_LOST end
local job = cjson.decode(raw)
-- The token, not the lease key, decides: an expired lease nobody re-claimed is still ours.
if job.status ~= STATUS_RUNNING or job.token ~= tonumber(ARGV[2]) then return HEARTBEAT_LOST end
redis.call('SET', KEYS[3], ARGV[2], 'PX', tonumber(ARGV[3]))
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return HEARTBEAT_CANCEL end
return HEARTBEAT_OK
