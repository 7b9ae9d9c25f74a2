-- Apply one batch's group creations and deletions of one tenant to the set of its live group ids.
-- A set, not a counter: adding a present id or removing an absent one changes nothing, so replayed batches
-- and the same group reported by both input formats count once. A script, not a pipeline, so each event
-- gets the exact size right after its own change even while other workers change the same set.
-- KEYS[1] gew:tenant:{<tenant>}:groups; ARGV[1] ttl seconds, then pairs: op ('+' created, '-' deleted), group id.
-- Returns the size of the set after each pair, in order.
local key, ttl = KEYS[1], ARGV[1]
local sizes = {}
for i = 2, #ARGV, 2 do
  if ARGV[i] == '+' then
    redis.call('SADD', key, ARGV[i + 1])
  else
    redis.call('SREM', key, ARGV[i + 1])
  end
  sizes[#sizes + 1] = redis.call('SCARD', key)
end
redis.call('EXPIRE', key, ttl)  -- after the writes: a no-op when the last removal emptied (deleted) the set
return sizes
