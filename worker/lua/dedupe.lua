-- Claim an event id for the input position that first saw it.
-- KEYS[1] dedupe key; ARGV[1] position tag "topic:partition:offset"; ARGV[2] ttl seconds.
-- Returns 1 when this position owns the claim (first sight, or the same position replayed after a crash),
-- 0 when another position claimed it first (a duplicate).
local owner = redis.call('GET', KEYS[1])
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if owner == ARGV[1] then
  return 1
end
return 0
