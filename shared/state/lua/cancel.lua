-- Request cancellation: set the flag, cancel every pending/retrying job.
-- KEYS: run, jobs, events, plan, log streams...
-- Returns {REPLY_OK, running job names...} | {REPLY_ERR, what}
local FIRST_LOG = 5
if redis.call('EXISTS', KEYS[1]) == 0 then return {REPLY_ERR, ERR_NO_RUN} end
if not log_keys_match(FIRST_LOG) then return {REPLY_ERR, ERR_KEYS} end
if redis.call('HGET', KEYS[1], 'status') ~= STATUS_RUNNING then return {REPLY_OK} end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')

-- Walk jobs in creation order so events come out in a stable order.
local flat = redis.call('HGETALL', KEYS[2])
local jobs = {}
for i = 1, #flat, 2 do
  local job = cjson.decode(flat[i + 1])
  job.name_ = flat[i]
  jobs[#jobs + 1] = job
end
table.sort(jobs, function(a, b) return a.position < b.position end)

local now = now_ms()
local result = {REPLY_OK}
for _, job in ipairs(jobs) do
  local name = job.name_
  job.name_ = nil
  if job.status == STATUS_RUNNING then
    result[#result + 1] = name
  elseif can_move(job.status, STATUS_CANCELLED) then
    local from = job.status
    job.status, job.reason, job.finished_at = STATUS_CANCELLED, REASON_CANCELLED, now
    save_job(name, job)
    emit(name, from, job.status, now, job.attempt, job.reason)
    job_terminal(job, now, FIRST_LOG)
  end
end
return result
