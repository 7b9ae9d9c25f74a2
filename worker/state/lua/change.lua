-- One step of a users.modified change; the rules are worker/processing/reassembly.py (apply_part, apply_timeout,
-- apply_continue), the key layout is worker/state/changes.py. Every call does work bounded by its part's users plus
-- one chunk: multi-field commands (chunked again: Lua's unpack has a stack limit) and LRANGE of one chunk.
-- KEYS: users hash, order list, emitted hash, meta hash, chunks hash; one hash tag.
-- ARGV: op ('part' | 'timeout' | 'continue'), tag, ttl seconds, chunk size, then
--   part: event id, is_final ('1'/'0'), change info JSON, user...
--   continue: cursor
-- Returns {} when nothing is emitted, else {late, complete, next cursor (-1: none), info JSON, user1, event1, ...}.
local users_key, order_key, emitted_key, meta_key, chunks_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, tag, ttl, chunk = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local UNPACK = 1000

local function hmget(key, fields)
  local values = {}
  for i = 1, #fields, UNPACK do
    local got = redis.call('HMGET', key, unpack(fields, i, math.min(i + UNPACK - 1, #fields)))
    for j = 1, #got do
      values[#values + 1] = got[j]
    end
  end
  return values
end

local function hset(key, flat)  -- field1, value1, field2, value2, ...
  for i = 1, #flat, 2 * UNPACK do
    redis.call('HSET', key, unpack(flat, i, math.min(i + 2 * UNPACK - 1, #flat)))
  end
end

local function rpush(key, items)
  for i = 1, #items, UNPACK do
    redis.call('RPUSH', key, unpack(items, i, math.min(i + UNPACK - 1, #items)))
  end
end

local function touch()  -- after the last write: EXPIRE on a key not created yet would be lost
  for _, key in ipairs(KEYS) do
    redis.call('EXPIRE', key, ttl)
  end
end

-- Claim the candidates not emitted yet (or emitted by this same tag: a replay); append them to out.
local function claim(candidates, out)
  local owners = hmget(emitted_key, candidates)
  local carried = hmget(users_key, candidates)
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
  return out
end

local function close(field)  -- the close owes every user collected so far
  redis.call('HSET', meta_key, field, tag, 'end', redis.call('LLEN', order_key), 'next', 0)
end

-- The chunk of this tag: the range it covered before (a replay), else `chunk` users from `start`.
local function emit_chunk(start, complete)
  local range = redis.call('HGET', chunks_key, tag)
  local stop
  local last = tonumber(redis.call('HGET', meta_key, 'end'))
  if range then
    local sep = string.find(range, ':', 1, true)
    start, stop = tonumber(string.sub(range, 1, sep - 1)), tonumber(string.sub(range, sep + 1))
  else
    stop = math.min(start + chunk, last)
    redis.call('HSET', chunks_key, tag, start .. ':' .. stop)
  end
  if stop > tonumber(redis.call('HGET', meta_key, 'next')) then
    redis.call('HSET', meta_key, 'next', stop)
  end
  local candidates = {}
  if stop > start then
    candidates = redis.call('LRANGE', order_key, start, stop - 1)
  end
  local out = claim(candidates, {0, complete, stop < last and stop or -1, redis.call('HGET', meta_key, 'info')})
  touch()
  return out
end

local meta = redis.call('HMGET', meta_key, 'info', 'final', 'timed_out', 'next', 'end')
local final_tag, timeout_tag = meta[2], meta[3]
local closed = final_tag or timeout_tag
local complete = timeout_tag and 0 or 1

-- The users of a part that no earlier part carried (`carriers[i]`: who carried part_users[i], if any), each
-- once: their field/value pairs for the users hash (user, event id), and the users in arrival order.
local function newcomers(part_users, event_id, carriers)
  local fields, users, seen = {}, {}, {}
  for i, user in ipairs(part_users) do
    if not carriers[i] and not seen[user] then
      seen[user] = true
      fields[#fields + 1] = user
      fields[#fields + 1] = event_id
      users[#users + 1] = user
    end
  end
  return fields, users
end

local part_users = {}
if op == 'part' then
  for i = 8, #ARGV do
    part_users[#part_users + 1] = ARGV[i]
  end
end

if op == 'part' and not meta[1] and ARGV[6] == '1' then
  -- The common case, a change seen first in its final part (a single-part change): the writes and the
  -- result of the general path below, from what this call knows, in half the commands.
  local event_id = ARGV[5]
  local new_fields, new_users = newcomers(part_users, event_id, {})
  local last = #new_users
  local stop = math.min(chunk, last)
  hset(users_key, new_fields)
  rpush(order_key, new_users)
  redis.call('HSET', meta_key, 'info', ARGV[7], 'final', tag, 'end', last, 'next', stop)
  redis.call('HSET', chunks_key, tag, '0:' .. stop)
  local claims, out = {}, {0, 1, stop < last and stop or -1, ARGV[7]}
  for i = 1, stop do
    claims[#claims + 1] = new_users[i]
    claims[#claims + 1] = tag
    out[#out + 1] = new_users[i]
    out[#out + 1] = event_id
  end
  hset(emitted_key, claims)
  touch()
  return out
end

if op == 'part' then
  local event_id, is_final = ARGV[5], ARGV[6] == '1'
  local new_fields, new_users = newcomers(part_users, event_id, hmget(users_key, part_users))
  hset(users_key, new_fields)
  rpush(order_key, new_users)
  redis.call('HSETNX', meta_key, 'info', ARGV[7])
  if is_final and not closed then
    close('final')
    final_tag, closed, complete = tag, true, 1
  end
  if final_tag == tag or redis.call('HEXISTS', chunks_key, tag) == 1 then
    return emit_chunk(tonumber(redis.call('HGET', meta_key, 'next')), complete)
  end
  if not closed then
    touch()
    return {}
  end
  local candidates, unique = {}, {}
  for _, user in ipairs(part_users) do
    if not unique[user] then
      unique[user] = true
      candidates[#candidates + 1] = user
    end
  end
  local out = claim(candidates, {1, complete, -1, meta[1]})
  touch()
  return out
end

if not meta[1] then  -- unknown change (never seen, or its state expired): nothing to do, nothing to write
  return {}
end
local known = redis.call('HEXISTS', chunks_key, tag) == 1
if op == 'timeout' then
  if not closed then
    close('timed_out')
    return emit_chunk(0, 0)
  end
  if known then
    return emit_chunk(0, complete)
  end
  return {}
end
-- op == 'continue'
local cursor = tonumber(ARGV[5])
if known or (closed and cursor == tonumber(meta[4]) and cursor < tonumber(meta[5])) then
  return emit_chunk(cursor, complete)
end
return {}
