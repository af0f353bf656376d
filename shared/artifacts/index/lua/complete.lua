-- Mark a reserved record complete and its objects present.
-- KEYS: record, then one present mark per digest of the record. Returns 1, or 0 when not stored.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'complete', '1')
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], '1')
end
return 1
