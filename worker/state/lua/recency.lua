-- Steps of one group's recency; the rules are worker/processing/recency.py (apply), the key layout is
-- worker/state/recency.py. Times are fixed-width decimal strings (microseconds since year 1), compared as
-- strings: exact, without Lua's floating point. Deleted is '0' or '1', compared the same way.
-- KEYS[1]: the group's newest hash (time, deleted); then the keys of each step, in order:
--   'seen':    the change's time key
--   'emitted': the tag's verdict key
--   'change':  the tag's verdict key, the change's time key
-- ARGV[1]: TTL of the newest hash; ARGV[2]: TTL of verdicts and change times; then per step: op, time, deleted
-- ('seen' ignores deleted; 'change' uses the change's time when one was seen, else its own).
-- Returns one verdict per step: 1 superseded, 0 not (always 0 for 'seen').
local newest_key, newest_ttl, step_ttl = KEYS[1], ARGV[1], ARGV[2]
local current = redis.call('HMGET', newest_key, 'time', 'deleted')
local newest_time, newest_deleted = current[1], current[2]
local changed = false
local verdicts = {}
local k = 2
for a = 3, #ARGV, 3 do
  local op, time, deleted = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  if op == 'seen' then
    local change_key = KEYS[k]
    k = k + 1
    local latest = redis.call('GET', change_key)
    if not latest or time > latest then
      redis.call('SET', change_key, time, 'EX', step_ttl)
    else
      redis.call('EXPIRE', change_key, step_ttl)
    end
    verdicts[#verdicts + 1] = 0
  else
    local verdict_key = KEYS[k]
    k = k + 1
    if op == 'change' then
      time = redis.call('GET', KEYS[k]) or time
      k = k + 1
    end
    local known = redis.call('GET', verdict_key)
    if known then  -- this tag ran before: its verdict, and nothing changes
      verdicts[#verdicts + 1] = tonumber(known)
    else
      local superseded = 0
      if newest_time and (time < newest_time or (time == newest_time and deleted < newest_deleted)) then
        superseded = 1
      elseif not newest_time or time ~= newest_time or deleted ~= newest_deleted then
        newest_time, newest_deleted, changed = time, deleted, true
      end
      redis.call('SET', verdict_key, superseded, 'EX', step_ttl)
      verdicts[#verdicts + 1] = superseded
    end
  end
end
if changed then
  redis.call('HSET', newest_key, 'time', newest_time, 'deleted', newest_deleted)
end
if newest_time then  -- after the write: EXPIRE on a key not created yet would be lost
  redis.call('EXPIRE', newest_key, newest_ttl)
end
return verdicts
