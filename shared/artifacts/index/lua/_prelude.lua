-- Helpers shared by the artifact index scripts; the Python loader prepends this file, after
-- the generated locals REPLY_OK, REPLY_ERR and ERR_KEYS (redis.lua_names) that every script gets.
--
-- Scripts that replace or drop a record share one KEYS layout:
--   KEYS[1] record hash, KEYS[2] the record's digest set, KEYS[3] the set of every record
--   key, KEYS[4] the run's set of record keys, then one refcount key per digest the caller
--   read from KEYS[2] (every key a script touches is declared, as Redis Cluster requires).

local FIRST_REF = 5

-- Whether the record's digest set holds exactly ARGV[first .. first+count-1]. The caller
-- read the set before calling; a concurrent change since then makes it call again.
local function same_members(set, first, count)
  if redis.call('SCARD', set) ~= count then return false end
  for i = first, first + count - 1 do
    if redis.call('SISMEMBER', set, ARGV[i]) == 0 then return false end
  end
  return true
end

-- Drop the record and one reference from each of its `count` digests (ARGV[first ..],
-- refcount keys KEYS[FIRST_REF ..]); returns the digests whose count reached zero.
local function release(first, count)
  local zeros = {}
  for i = 0, count - 1 do
    local ref = KEYS[FIRST_REF + i]
    if redis.call('DECR', ref) <= 0 then
      -- A digest exists in the index only while something references it.
      redis.call('DEL', ref)
      zeros[#zeros + 1] = ARGV[first + i]
    end
  end
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SREM', KEYS[3], KEYS[1])
  redis.call('SREM', KEYS[4], KEYS[1])
  return zeros
end
