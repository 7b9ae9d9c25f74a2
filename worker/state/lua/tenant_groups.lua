-- Apply one batch's group creations and deletions of one tenant to the set of its live group ids.
-- A set, not a counter: adding a present id or removing an absent one changes nothing, so duplicates and the
-- same group reported by both input formats count once. A script, not a pipeline, so each event gets the exact
-- size right after its own change even while other workers change the same set. The tag rule
-- (worker/processing/reassembly.py): each change is applied once under its input position, and the size it
-- gave is recorded in a key of that position's own, which expires with the replay window; applied again (a
-- replay, a zombie's run of a committed position) it writes nothing and gives that size again, so a creation
-- run again after the group's deletion does not re-add it. The legacy `applied` hash (one field per position,
-- written before issue 22) is read, never written nor kept alive: it expires on its own.
-- KEYS[1] gew:tenant:{<tenant>}:groups, KEYS[2] the legacy gew:tenant:{<tenant>}:applied, then one key per
-- change: gew:tenant:{<tenant>}:applied:<tag> (one hash tag);
-- ARGV[1] TTL of the set, ARGV[2] TTL of the applied keys, then triples: op ('+' created, '-' deleted),
-- group id, tag.
-- Returns the size of the set after each change, in order.
local key, legacy, ttl, applied_ttl = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local sizes = {}
local k = 3
for i = 3, #ARGV, 3 do
  local applied = KEYS[k]
  k = k + 1
  local size = redis.call('GET', applied) or redis.call('HGET', legacy, ARGV[i + 2])
  if not size then
    if ARGV[i] == '+' then
      redis.call('SADD', key, ARGV[i + 1])
    else
      redis.call('SREM', key, ARGV[i + 1])
    end
    size = redis.call('SCARD', key)
    redis.call('SET', applied, size, 'EX', applied_ttl)
  end
  sizes[#sizes + 1] = tonumber(size)
end
redis.call('EXPIRE', key, ttl)  -- after the writes: a no-op when the last removal emptied (deleted) the set
return sizes
