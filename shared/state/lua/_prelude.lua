-- Helpers shared by every Conveyor state script. The Python loader (shared/state/redis.py)
-- prepends this file with a header generated from shared/state/base.py and redis.py:
--   MACHINE (from -> {to = true}) and TERMINAL ({status = true}): the job state machine;
--   RUN_COUNTS and RUN_OUTCOME: what a terminal job adds to its run's counters, and the
--   run's status when its last job ends (base.run_counters, base.run_outcome);
--   one local per name Lua and Python share: STATUS_*, REASON_*, REFUSED_*, HEARTBEAT_*,
--   REPLY_*, ERR_*, FIELD_* (redis.lua_names). Scripts never spell those names themselves.
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

local function flag(yes)
  if yes then return '1' end
  return '0'
end

local function run_ended(now, first_log)
  local run = KEYS[1]
  local counts = redis.call('HMGET', run, FIELD_FAILED, FIELD_CANCELLED, 'cancel_requested', 'retention_ms')
  local status = RUN_OUTCOME[flag(tonumber(counts[1]) > 0) .. flag(tonumber(counts[2]) > 0)
                             .. flag(counts[3] == '1')]
  redis.call('HSET', run, 'status', status, 'finished_at', now)
  emit('', STATUS_RUNNING, status, now, nil, nil)
  local ttl = tonumber(counts[4])
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
  for i = first_log, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
end

-- Bookkeeping for a job that just became terminal; ends the run with its last job.
local function job_terminal(job, now, first_log)
  local run = KEYS[1]
  local adds = RUN_COUNTS[job.status][tostring(job.allow_failure == true)]
  if adds[1] > 0 then redis.call('HINCRBY', run, FIELD_FAILED, adds[1]) end
  if adds[2] > 0 then redis.call('HINCRBY', run, FIELD_CANCELLED, adds[2]) end
  if redis.call('HINCRBY', run, FIELD_OPEN, -1) == 0 then
    run_ended(now, first_log)
  end
end
