-- Apply one batch's group creations and deletions of one tenant to the set of its live group ids.
-- A set, not a counter: adding a present id or removing an absent one changes nothing, so duplicates and the
-- same group reported by both input formats count once. A script, not a pipeline, so each event gets the exact
-- size right after its own change even while other workers change the same set. The tag rule
-- (worker/processing/reassembly.py): each change is applied once under its input position, and the size it
-- gave is recorded; applied again (a replay, a zombie's run of a committed position) it writes nothing and
-- gives that size again, so a creation run again after the group's deletion does not re-add it.
-- KEYS[1] gew:tenant:{<tenant>}:groups, KEYS[2] gew:tenant:{<tenant>}:applied (one hash tag);
-- ARGV[1] ttl seconds, then triples: op ('+' created, '-' deleted), group id, tag.
-- Returns the size of the set after each change, in order.
local key, applied, ttl = KEYS[1], KEYS[2], ARGV[1]
local sizes = {}
for i = 2, #ARGV, 3 do
  local size = redis.call('HGET', applied, ARGV[i + 2])
  if not size then
    if ARGV[i] == '+' then
      redis.call('SADD', key, ARGV[i + 1])
    else
      redis.call('SREM', key, ARGV[i + 1])
    end
    size = redis.call('SCARD', key)
    redis.call('HSET', applied, ARGV[i + 2], size)
  end
  sizes[#sizes + 1] = tonumber(size)
end
redis.call('EXPIRE', key, ttl)  -- after the writes: a no-op when the last removal emptied (deleted) the set
redis.call('EXPIRE', applied, ttl)
return sizes
