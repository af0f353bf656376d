-- pending -> skipped.
-- KEYS: run, jobs, events, plan, log streams...
-- ARGV: job, reason
-- Returns 1 when skipped, 0 when the job was not pending.
local FIRST_LOG = 5
if redis.call('EXISTS', KEYS[1]) == 0 then return {'err', 'no_run'} end
if not log_keys_match(FIRST_LOG) then return {'err', 'keys'} end
local name = ARGV[1]
local job = load_job(name)
if not job then return {'err', 'no_job'} end
if not can_move(job.status, 'skipped') then return 0 end
local now = now_ms()
local from = job.status
job.status, job.reason, job.finished_at = 'skipped', ARGV[2], now
save_job(name, job)
emit(name, from, 'skipped', now, job.attempt, job.reason)
job_terminal(job, now, FIRST_LOG)
return 1
