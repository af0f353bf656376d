-- Helpers shared by every Conveyor state script. The Python loader prepends this file,
-- preceded by `local MACHINE` (from -> {to = true}) and `local TERMINAL` ({status = true})
-- generated from shared/state/base.py, so the state machine has a single definition.
--
-- Scripts that can end a run share one KEYS layout:
--   KEYS[1] run hash, KEYS[2] jobs hash, KEYS[3] events stream, KEYS[4] plan string,
--   then (claim/finish only) the job's lease key, then one log stream per job of the run.
-- Every log stream is declared so that the run-end EXPIRE touches only declared keys.

-- The one clock: Redis server time, so timestamps written by different machines compare.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Python sends '' for None.
local function arg_or_null(v)
  if v == nil or v == '' then return cjson.null end
  return v
end

local function num_or_null(v)
  if v == nil or v == '' then return cjson.null end
  return tonumber(v)
end

local function str(v)
  if v == nil or v == cjson.null then return '' end
  return tostring(v)
end

local function can_move(from, to)
  local targets = MACHINE[from]
  return targets ~= nil and targets[to] == true
end

local function load_job(name)
  local raw = redis.call('HGET', KEYS[2], name)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function save_job(name, job)
  redis.call('HSET', KEYS[2], name, cjson.encode(job))
end

local function emit(job, from, to, at, attempt, reason)
  redis.call('XADD', KEYS[3], '*', 'job', job, 'from', from, 'to', to, 'at', at,
             'attempt', str(attempt), 'reason', str(reason))
end

-- The caller's cached job list must match the stored one, or some log stream would
-- escape the run-end EXPIRE.
local function log_keys_match(first_log)
  return redis.call('HLEN', KEYS[2]) == #KEYS - first_log + 1
end

local function run_ended(now, first_log)
  local run = KEYS[1]
  local counts = redis.call('HMGET', run, 'failed', 'cancelled', 'cancel_requested', 'retention_ms')
  local status
  if tonumber(counts[1]) == 0 and tonumber(counts[2]) == 0 then
    status = 'success'
  elseif counts[3] == '1' then
    status = 'cancelled'
  else
    status = 'failed'
  end
  redis.call('HSET', run, 'status', status, 'finished_at', now)
  emit('', 'running', status, now, nil, nil)
  local ttl = tonumber(counts[4])
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
  for i = first_log, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
end

-- Bookkeeping for a job that just became terminal; ends the run with its last job.
local function job_terminal(job, now, first_log)
  local run = KEYS[1]
  if job.status == 'failed' and not job.allow_failure then
    redis.call('HINCRBY', run, 'failed', 1)
  elseif job.status == 'cancelled' then
    redis.call('HINCRBY', run, 'cancelled', 1)
  end
  if redis.call('HINCRBY', run, 'open', -1) == 0 then
    run_ended(now, first_log)
  end
end
