-- Release a lock only if its owner still holds it (its lease may have expired and been
-- taken by another). KEYS: lock. ARGV: owner. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
