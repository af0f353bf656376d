-- Record the outcome of the current attempt, fenced by its token.
-- KEYS: run, jobs, events, plan, lease, log streams...
-- ARGV: job, token, status, exit_code, reason, retry_delay ('' = None)
-- Returns 1 when written, 0 when refused (stale token or a transition the machine forbids).
local FIRST_LOG = 6
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if not log_keys_match(FIRST_LOG) then return {'err', 'keys'} end
local name, token, status = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local job = load_job(name)
if not job then return {'err', 'no_job'} end
-- Only a claimed job (running, or retrying after a claim) has a token to present.
if (job.status ~= 'running' and job.status ~= 'retrying') or job.token ~= token
   or not can_move(job.status, status) then
  return 0
end

local now = now_ms()
local from = job.status
local exit_code, reason = num_or_null(ARGV[4]), arg_or_null(ARGV[5])
if reason == cjson.null and status == 'cancelled' then reason = 'cancelled' end
if from == 'running' then
  local a = job.attempts[#job.attempts]
  a.status, a.finished_at, a.exit_code, a.reason = status, now, exit_code, reason
  if status == 'retrying' then a.retry_delay = num_or_null(ARGV[6]) end
  job.exit_code = exit_code
  redis.call('DEL', KEYS[5])
else
  -- retrying -> failed/cancelled: giving up on a scheduled retry keeps the last exit code.
  if exit_code ~= cjson.null then job.exit_code = exit_code end
end
if reason ~= cjson.null or from == 'running' then job.reason = reason end
job.status = status
if TERMINAL[status] then job.finished_at = now end
save_job(name, job)
emit(name, from, status, now, job.attempt, job.reason)
if TERMINAL[status] then job_terminal(job, now, FIRST_LOG) end
return 1
