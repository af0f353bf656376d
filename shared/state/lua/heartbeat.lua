-- Extend the lease of the current attempt.
-- KEYS: run, jobs, lease
-- ARGV: job, token, lease_ms
-- Returns 'ok', 'lost' (token no longer current) or 'cancel' (lease extended; stop soon).
if redis.call('EXISTS', KEYS[1]) == 0 then return 'lost' end
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return 'lost' end
local job = cjson.decode(raw)
-- The token, not the lease key, decides: an expired lease nobody re-claimed is still ours.
if job.status ~= 'running' or job.token ~= tonumber(ARGV[2]) then return 'lost' end
redis.call('SET', KEYS[3], ARGV[2], 'PX', tonumber(ARGV[3]))
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 'cancel' end
return 'ok'
