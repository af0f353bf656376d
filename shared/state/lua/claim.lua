-- Start a new attempt of a job, unless another attempt holds a live lease.
-- KEYS: run, jobs, events, plan, lease, log streams...
-- ARGV: job, worker, lease_ms, max_lost, token (fresh from the global INCR counter)
-- Returns {'claimed', token, attempt} | {'refused', reason} | {'retry'} | {'err', what}
local FIRST_LOG = 6
if redis.call('EXISTS', KEYS[1]) == 0 then return {'err', 'no_run'} end
if not log_keys_match(FIRST_LOG) then return {'err', 'keys'} end
local name, worker = ARGV[1], ARGV[2]
local lease_ms, max_lost, token = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local job = load_job(name)
if not job then return {'err', 'no_job'} end

-- A redelivered message for a finished job must not run it again.
if TERMINAL[job.status] then return {'refused', 'finished'} end
if job.status == 'running' and redis.call('EXISTS', KEYS[5]) == 1 then
  return {'refused', 'leased'}
end
-- Tokens only grow per job; a token drawn before a newer claim landed is too old.
if token <= job.token then return {'retry'} end

local now = now_ms()
local from = job.status
local lost = false
if from == 'running' then
  -- The lease expired without a finish: the worker holding it is gone.
  lost = true
  local dead = job.attempts[#job.attempts]
  dead.status = 'failed'
  dead.reason = 'worker_lost'
  dead.finished_at = now
  job.lost = job.lost + 1
end

local refusal = nil
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  job.status, job.reason, refusal = 'cancelled', 'cancelled', 'cancelled'
elseif lost and job.lost > max_lost then
  job.status, job.reason, refusal = 'failed', 'worker_lost', 'worker_lost'
end
if refusal then
  job.finished_at = now
  save_job(name, job)
  emit(name, from, job.status, now, job.attempt, job.reason)
  job_terminal(job, now, FIRST_LOG)
  return {'refused', refusal}
end

job.attempt = job.attempt + 1
job.attempts[job.attempt] = {
  number = job.attempt, worker = worker, token = token, started_at = now,
  finished_at = cjson.null, status = 'running', exit_code = cjson.null,
  reason = cjson.null, retry_delay = cjson.null,
}
job.status = 'running'
job.token = token
job.worker = worker
if job.started_at == cjson.null then job.started_at = now end
job.finished_at, job.exit_code, job.reason = cjson.null, cjson.null, cjson.null
save_job(name, job)
redis.call('SET', KEYS[5], token, 'PX', lease_ms)
local why = nil
if lost then why = 'worker_lost' end
emit(name, from, 'running', now, job.attempt, why)
return {'claimed', token, job.attempt}
