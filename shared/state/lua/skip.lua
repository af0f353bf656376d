-- pending -> skipped.
-- KEYS: run, jobs, events, plan, log streams...
-- ARGV: job, reason
-- Returns 1 when skipped, 0 when the job was not pending.
local FIRST_LOG = 5
if redis.call('EXISTS', KEYS[1]) == 0 then return {REPLY_ERR, ERR_NO_RUN} end
if not log_keys_match(FIRST_LOG) then return {REPLY_ERR, ERR_KEYS} end
local name = ARGV[1]
local job = load_job(name)
if not job then return {REPLY_ERR, ERR_NO_JOB} end
if not can_move(job.status, STATUS_SKIPPED) then return 0 end
local now = now_ms()
local from = job.status
job.status, job.reason, job.finished_at = STATUS_SKIPPED, ARGV[2], now
save_job(name, job)
emit(name, from, job.status, now, job.attempt, job.reason)
job_terminal(job, now, FIRST_LOG)
return 1
