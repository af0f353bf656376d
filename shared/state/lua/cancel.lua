-- Request cancellation: set the flag, cancel every pending/retrying job.
-- KEYS: run, jobs, events, plan, log streams...
-- Returns {'ok', running job names...} | {'err', what}
local FIRST_LOG = 5
if redis.call('EXISTS', KEYS[1]) == 0 then return {'err', 'no_run'} end
if not log_keys_match(FIRST_LOG) then return {'err', 'keys'} end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return {'ok'} end
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
local result = {'ok'}
for _, job in ipairs(jobs) do
  local name = job.name_
  job.name_ = nil
  if job.status == 'running' then
    result[#result + 1] = name
  elseif can_move(job.status, 'cancelled') then
    local from = job.status
    job.status, job.reason, job.finished_at = 'cancelled', 'cancelled', now
    save_job(name, job)
    emit(name, from, 'cancelled', now, job.attempt, job.reason)
    job_terminal(job, now, FIRST_LOG)
  end
end
return result
