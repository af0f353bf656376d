-- Start a new attempt of a job, unless another attempt holds a live lease.
-- KEYS: run, jobs, events, plan, lease, log streams...
-- ARGV: job, worker, lease_ms, max_lost, token (fresh from the global INCR counter)
-- Returns {REPLY_CLAIMED, token, attempt} | {REPLY_REFUSED, REFUSED_*} | {REPLY_RETRY}
--       | {REPLY_ERR, what}
local FIRST_LOG = 6
if redis.call('EXISTS', KEYS[1]) == 0 then return {REPLY_ERR, ERR_NO_RUN} end
if not log_keys_match(FIRST_LOG) then return {REPLY_ERR, ERR_KEYS} end
local name, worker = ARGV[1], ARGV[2]
local lease_ms, max_lost, token = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local job = load_job(name)
if not job then return {REPLY_ERR, ERR_NO_JOB} end

-- A redelivered message for a finished job must not run it again.
if TERMINAL[job.status] then return {REPLY_REFUSED, REFUSED_FINISHED} end
if job.status == STATUS_RUNNING and redis.call('EXISTS', KEYS[5]) == 1 then
  return {REPLY_REFUSED, REFUSED_LEASED}
end
-- Tokens only grow per job; a token drawn before a newer claim landed is too old.
if token <= job.token then return {REPLY_RETRY} end

local now = now_ms()
local from = job.status
local lost = false
if from == STATUS_RUNNING then
  -- The lease expired without a finish: the worker holding it is gone.
  lost = true
  local dead = job.attempts[#job.attempts]
  dead.status = STATUS_FAILED
  dead.reason = REASON_WORKER_LOST
  dead.finished_at = now
  job.lost = job.lost + 1
end

local refusal = nil
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  job.status, job.reason, refusal = STATUS_CANCELLED, REASON_CANCELLED, REFUSED_CANCELLED
elseif lost and job.lost > max_lost then
  job.status, job.reason, refusal = STATUS_FAILED, REASON_WORKER_LOST, REFUSED_WORKER_LOST
end
if refusal then
  job.finished_at = now
  save_job(name, job)
  emit(name, from, job.status, now, job.attempt, job.reason)
  job_terminal(job, now, FIRST_LOG)
  return {REPLY_REFUSED, refusal}
end

job.attempt = job.attempt + 1
job.attempts[job.attempt] = {
  number = job.attempt, worker = worker, token = token, started_at = now,
  finished_at = cjson.null, status = STATUS_RUNNING, exit_code = cjson.null,
  reason = cjson.null, retry_delay = cjson.null,
}
job.status = STATUS_RUNNING
job.token = token
job.worker = worker
if job.started_at == cjson.null then job.started_at = now end
job.finished_at, job.exit_code, job.reason = cjson.null, cjson.null, cjson.null
save_job(name, job)
redis.call('SET', KEYS[5], token, 'PX', lease_ms)
local why = nil
if lost then why = REASON_WORKER_LOST end
emit(name, from, STATUS_RUNNING, now, job.attempt, why)
return {REPLY_CLAIMED, token, job.attempt}
