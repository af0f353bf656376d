-- Record the outcome of the current attempt, fenced by its token.
-- KEYS: run, jobs, events, plan, lease, log streams...
-- ARGV: job, token, status, exit_code, reason, retry_delay ('' = None). Python has already
-- checked them and resolved their defaults (base.finish_args): the reason of a bare
-- `cancelled`, and a retry_delay only for `retrying`, as the repr of a float.
-- Returns 1 when written, 0 when refused (stale token or a transition the machine forbids).
local FIRST_LOG = 6
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if not log_keys_match(FIRST_LOG) then return {REPLY_ERR, ERR_KEYS} end
local name, token, status = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local job = load_job(name)
if not job then return {REPLY_ERR, ERR_NO_JOB} end
-- Only a claimed job (running, or retrying after a claim) has a token to present.
if (job.status ~= STATUS_RUNNING and job.status ~= STATUS_RETRYING) or job.token ~= token
   or not can_move(job.status, status) then
  return 0
end

local now = now_ms()
local from = job.status
local exit_code, reason = num_or_null(ARGV[4]), arg_or_null(ARGV[5])
if from == STATUS_RUNNING then
  local a = job.attempts[#job.attempts]
  a.status, a.finished_at, a.exit_code, a.reason = status, now, exit_code, reason
  -- Kept as the string Python sent: cjson would round a number to 14 significant digits.
  a.retry_delay = arg_or_null(ARGV[6])
  job.exit_code = exit_code
  redis.call('DEL', KEYS[5])
else
  -- retrying -> failed/cancelled: giving up on a scheduled retry keeps the last exit code.
  if exit_code ~= cjson.null then job.exit_code = exit_code end
end
if reason ~= cjson.null or from == STATUS_RUNNING then job.reason = reason end
job.status = status
if TERMINAL[status] then job.finished_at = now end
save_job(name, job)
emit(name, from, status, now, job.attempt, job.reason)
if TERMINAL[status] then job_terminal(job, now, FIRST_LOG) end
return 1
