-- One step of a users.modified change; the rules are worker/processing/reassembly.py (apply_part, apply_timeout,
-- apply_continue), the key layout is worker/state/changes.py. Every call does work bounded by its part's users plus
-- one chunk: multi-field commands (chunked again: Lua's unpack has a stack limit) and LRANGE of one chunk.
-- The tag rule: the first application of a tag records what it emitted in the applied hash; any later
-- application of that tag (a replay, a zombie) writes nothing and returns the same from the same record.
-- All reads come before the first write: a Redis at maxmemory under noeviction refuses that write, and so the
-- whole call (OOM error, nothing written; the batch is retried).
-- KEYS: users hash, order list, meta hash, applied hash, and the chunks hash of the layout before issue 19 (read
-- only: the chunk a worker of that version recorded for a tag); one hash tag.
-- ARGV: op ('part' | 'timeout' | 'continue'), tag, ttl seconds, chunk size, then
--   part: event id, is_final ('1'/'0'), change info JSON, user...
--   continue: cursor
-- Returns {} when nothing is emitted, else {late, complete, next cursor (-1: none), info JSON, user1, event1, ...}.
-- State that is not what these rules write (a key deleted or evicted) is an error reply 'STATE_MISSING <key>: ...'.
local users_key, order_key, meta_key, applied_key, legacy_chunks_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, tag, ttl, chunk = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local UNPACK = 1000

local function missing(key, what)
  error({err = 'STATE_MISSING ' .. key .. ': ' .. what})
end

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
  for _, key in ipairs({users_key, order_key, meta_key, applied_key}) do  -- the legacy key expires on its own
    redis.call('EXPIRE', key, ttl)
  end
end

-- The reply for the chunk order[start, stop) of this tag, from the change's meta fields.
local function reply(start, stop, more, info, final_tag, timeout_tag, late_from)
  if not info or not late_from then
    missing(meta_key, 'a closed change without its info or late_from')
  end
  local late = (start >= late_from and tag ~= final_tag and tag ~= timeout_tag) and 1 or 0
  local out = {late, timeout_tag and 0 or 1, more and stop or -1, info}
  if stop > start then
    local users = redis.call('LRANGE', order_key, start, stop - 1)
    if #users ~= stop - start then
      missing(order_key, 'users ' .. start .. '-' .. (stop - 1) .. ' of a chunk are gone')
    end
    local carried = hmget(users_key, users)
    for i, user in ipairs(users) do
      if not carried[i] then
        missing(users_key, 'user ' .. user .. ' of a chunk has no carrier')
      end
      out[#out + 1] = user
      out[#out + 1] = carried[i]
    end
  end
  return out
end

local meta = redis.call('HMGET', meta_key, 'info', 'final', 'timed_out', 'late_from', 'next', 'end')
local info, final_tag, timeout_tag = meta[1], meta[2], meta[3]
local closed = final_tag or timeout_tag
-- 'end' (users the close owed) is late_from as a worker before issue 19 wrote it: an upgrade finds it there
local late_from, next_start = tonumber(meta[4] or meta[6]), tonumber(meta[5])

-- What the first application of this tag emitted, from its record ('start:stop:more', or '' for nothing; a
-- record of the previous layout is 'start:stop', and the chain went on after it if it stopped before 'end').
local function again(record)
  if record == '' then
    return {}
  end
  local first = string.find(record, ':', 1, true)
  local second = string.find(record, ':', first + 1, true)
  local start = tonumber(string.sub(record, 1, first - 1))
  local stop = tonumber(string.sub(record, first + 1, (second or 0) - 1))
  local more = (second and string.sub(record, second + 1) == '1') or (not second and late_from and stop < late_from)
  return reply(start, stop, more, info, final_tag, timeout_tag, late_from)
end

local recorded = redis.call('HGET', applied_key, tag)
if not recorded and meta[6] then  -- a change closed by a worker of the previous layout
  recorded = redis.call('HGET', legacy_chunks_key, tag)
end
if recorded then
  return again(recorded)
end

local function nothing()  -- the first application of this tag emits nothing: so will every later one
  redis.call('HSET', applied_key, tag, '')
  touch()
  return {}
end

-- The next chunk, for this tag: from `start` (where the last one stopped), at most `chunk` users of the
-- `total` collected, never across late_from (a chunk is late or not as a whole).
local function emit_chunk(start, total, info, final_tag, timeout_tag, late_from)
  local stop = math.min(start + chunk, start >= late_from and total or late_from)
  local out = reply(start, stop, stop < total, info, final_tag, timeout_tag, late_from)  -- raises on missing state
  redis.call('HSET', meta_key, 'next', stop)
  redis.call('HSET', applied_key, tag, start .. ':' .. stop .. ':' .. (stop < total and '1' or '0'))
  touch()
  return out
end

local collected  -- users collected so far (LLEN of the order list), read where needed
if closed then
  collected = redis.call('LLEN', order_key)
  if not (info and late_from and next_start) then
    missing(meta_key, 'a closed change without its info, late_from or next')
  end
  if collected < math.max(late_from, next_start) then  -- the order list only grows
    missing(order_key, collected .. ' users, fewer than the close collected (' .. late_from .. ')')
  end
end

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

if op == 'part' then
  local event_id, is_final, part_info = ARGV[5], ARGV[6] == '1', ARGV[7]
  local part_users = {}
  for i = 8, #ARGV do
    part_users[#part_users + 1] = ARGV[i]
  end
  if not info and is_final then
    -- The common case, a change seen first in its final part (a single-part change): the writes and the
    -- result of the general path below, from what this call knows, in half the commands.
    local new_fields, new_users = newcomers(part_users, event_id, {})
    local total = #new_users
    local stop = math.min(chunk, total)
    hset(users_key, new_fields)
    rpush(order_key, new_users)
    redis.call('HSET', meta_key, 'info', part_info, 'final', tag, 'late_from', total, 'next', stop)
    redis.call('HSET', applied_key, tag, '0:' .. stop .. ':' .. (stop < total and '1' or '0'))
    touch()
    local out = {0, 1, stop < total and stop or -1, part_info}
    for i = 1, stop do
      out[#out + 1] = new_users[i]
      out[#out + 1] = event_id
    end
    return out
  end
  collected = collected or redis.call('LLEN', order_key)
  local new_fields, new_users = newcomers(part_users, event_id, hmget(users_key, part_users))
  local total = collected + #new_users
  hset(users_key, new_fields)
  rpush(order_key, new_users)
  if not info then
    info = part_info
    redis.call('HSET', meta_key, 'info', info)
  end
  if not closed and is_final then
    redis.call('HSET', meta_key, 'final', tag, 'late_from', total, 'next', 0)
    return emit_chunk(0, total, info, tag, nil, total)
  end
  if closed and next_start == collected and total > collected then  -- late users after the chain's end
    return emit_chunk(collected, total, info, final_tag, timeout_tag, late_from)
  end
  return nothing()
end

local total = collected or redis.call('LLEN', order_key)
if op == 'timeout' then
  if not info or closed then  -- unknown (never seen, or its state expired), or closed by another message
    return nothing()
  end
  redis.call('HSET', meta_key, 'timed_out', tag, 'late_from', total, 'next', 0)
  return emit_chunk(0, total, info, nil, tag, total)
end
-- op == 'continue'
local cursor = tonumber(ARGV[5])
if closed and cursor == next_start and cursor < total then
  return emit_chunk(cursor, total, info, final_tag, timeout_tag, late_from)
end
return nothing()
