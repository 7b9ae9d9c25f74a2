-- Close an expired open change under a lease; the rules are worker/reassembly.py:apply_timeout.
-- KEYS: users, emitted, meta (as part.lua). ARGV: token, now ms, lease ms, ttl seconds.
-- Returns {'done'} (closed already, or its state expired), {'busy'} (another live lease), or
-- {'emit', info JSON, user1, event1, ...}.
local users_key, emitted_key, meta_key = KEYS[1], KEYS[2], KEYS[3]
local token, now, lease_ms, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]

local info = redis.call('HGET', meta_key, 'info')
local lease = redis.call('HGET', meta_key, 'lease')
local timed_out = redis.call('HEXISTS', meta_key, 'timed_out') == 1
if not info or redis.call('HEXISTS', meta_key, 'final') == 1 or (timed_out and not lease) then
  return {'done'}
end
if lease and lease ~= token and tonumber(redis.call('HGET', meta_key, 'lease_until')) > now then
  return {'busy'}
end
redis.call('HSET', meta_key, 'timed_out', '1', 'lease', token, 'lease_until', tostring(now + lease_ms))

local candidates = redis.call('HKEYS', users_key)
table.sort(candidates)
local out = {'emit', info}
for _, user in ipairs(candidates) do
  local owner = redis.call('HGET', emitted_key, user)
  if not owner or owner == token or owner == lease then
    redis.call('HSET', emitted_key, user, token)
    out[#out + 1] = user
    out[#out + 1] = redis.call('HGET', users_key, user)
  end
end
for _, key in ipairs(KEYS) do  -- after the last write, so every key that exists carries the TTL
  redis.call('EXPIRE', key, ttl)
end
return out
