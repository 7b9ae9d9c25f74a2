-- Apply one part of a users.modified change; the rules are worker/reassembly.py:apply_part.
-- KEYS: users hash (user -> carrying event id), emitted hash (user -> tag), meta hash; one hash tag.
-- ARGV: tag, event id, is_final ('1'/'0'), ttl seconds, change info JSON, user...
-- Returns {} while the change stays open, else {late, complete, info JSON, user1, event1, user2, event2, ...}.
-- Multi-field commands (chunked: Lua's unpack has a stack limit) keep Redis's work per part, not per user.
local users_key, emitted_key, meta_key = KEYS[1], KEYS[2], KEYS[3]
local tag, event_id, is_final, ttl = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local CHUNK = 1000

local function hmget(key, fields)
  local values = {}
  for i = 1, #fields, CHUNK do
    local got = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for j = 1, #got do
      values[#values + 1] = got[j]
    end
  end
  return values
end

local function hset(key, flat)  -- field1, value1, field2, value2, ...
  for i = 1, #flat, 2 * CHUNK do
    redis.call('HSET', key, unpack(flat, i, math.min(i + 2 * CHUNK - 1, #flat)))
  end
end

local part_users = {}
for i = 6, #ARGV do
  part_users[#part_users + 1] = ARGV[i]
end
local carriers = hmget(users_key, part_users)
local new_users = {}
for i, user in ipairs(part_users) do
  if not carriers[i] then
    new_users[#new_users + 1] = user
    new_users[#new_users + 1] = event_id
  end
end
hset(users_key, new_users)
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
  local seen = {}
  for _, user in ipairs(part_users) do
    if not seen[user] then
      seen[user] = true
      candidates[#candidates + 1] = user
    end
  end
  late = 1
  complete = timed_out and 0 or 1
else
  touch()
  return {}
end

local owners = hmget(emitted_key, candidates)
local carried = hmget(users_key, candidates)
local out = {late, complete, redis.call('HGET', meta_key, 'info')}
local claims = {}
for i, user in ipairs(candidates) do
  if not owners[i] or owners[i] == tag then
    claims[#claims + 1] = user
    claims[#claims + 1] = tag
    out[#out + 1] = user
    out[#out + 1] = carried[i]
  end
end
hset(emitted_key, claims)
touch()
return out
