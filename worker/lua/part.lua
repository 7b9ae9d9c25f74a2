-- Apply one part of a users.modified change; the rules are worker/reassembly.py:apply_part.
-- KEYS: users hash (user -> carrying event id), emitted hash (user -> tag), meta hash; one hash tag.
-- ARGV: tag, event id, is_final ('1'/'0'), ttl seconds, change info JSON, user...
-- Returns {} while the change stays open, else {late, complete, info JSON, user1, event1, user2, event2, ...}.
local users_key, emitted_key, meta_key = KEYS[1], KEYS[2], KEYS[3]
local tag, event_id, is_final, ttl = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]

for i = 6, #ARGV do
  redis.call('HSETNX', users_key, ARGV[i], event_id)
end
redis.call('HSETNX', meta_key, 'info', ARGV[5])
local final_tag = redis.call('HGET', meta_key, 'final')
local timed_out = redis.call('HEXISTS', meta_key, 'timed_out') == 1
if is_final and not final_tag and not timed_out then
  redis.call('HSET', meta_key, 'final', tag)
  final_tag = tag
end
local function touch()  -- after the last write: EXPIRE on a key not created yet would be lost
  for _, key in ipairs(KEYS) do
    redis.call('EXPIRE', key, ttl)
  end
end

local candidates, late, complete
if final_tag == tag then
  candidates = redis.call('HKEYS', users_key)
  table.sort(candidates)
  late, complete = 0, 1
elseif final_tag or timed_out then
  candidates = {}
  for i = 6, #ARGV do
    candidates[#candidates + 1] = ARGV[i]
  end
  late = 1
  complete = timed_out and 0 or 1
else
  touch()
  return {}
end

local out = {late, complete, redis.call('HGET', meta_key, 'info')}
local seen = {}
for _, user in ipairs(candidates) do
  if not seen[user] then
    seen[user] = true
    local owner = redis.call('HGET', emitted_key, user)
    if not owner or owner == tag then
      redis.call('HSET', emitted_key, user, tag)
      out[#out + 1] = user
      out[#out + 1] = redis.call('HGET', users_key, user)
    end
  end
end
touch()
return out
