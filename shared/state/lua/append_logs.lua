-- Append log entries to a job's stream; the stream ID carries the Redis server time.
-- KEYS: run, jobs, log stream
-- ARGV: job, then stream, text pairs (none: only check that the run and job exist)
-- Returns the number appended, or {REPLY_ERR, what}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {REPLY_ERR, ERR_NO_RUN} end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return {REPLY_ERR, ERR_NO_JOB} end
for i = 2, #ARGV, 2 do
  redis.call('XADD', KEYS[3], '*', 'stream', ARGV[i], 'text', ARGV[i + 1])
end
-- Late output of an ended run must expire with the run, not outlive it.
if redis.call('HGET', KEYS[1], 'status') ~= STATUS_RUNNING then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
end
return (#ARGV - 1) / 2
