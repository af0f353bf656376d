-- Create a run and its pending jobs, refusing an existing run id.
-- KEYS: run, jobs, events, plan
-- ARGV: pipeline, meta json, plan json, retention_ms, then name, job json pairs
-- Returns created_at (ms), or 0 when the run already exists.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = now_ms()
local njobs = (#ARGV - 4) / 2
redis.call('HSET', KEYS[1],
  'pipeline', ARGV[1], 'status', STATUS_RUNNING, 'created_at', now, 'finished_at', '',
  'cancel_requested', '0', 'meta', ARGV[2], FIELD_OPEN, njobs, FIELD_FAILED, 0, FIELD_CANCELLED, 0,
  'retention_ms', ARGV[4])
redis.call('SET', KEYS[4], ARGV[3])
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return now
