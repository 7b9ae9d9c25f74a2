-- Steps of one group's recency; the rules are worker/processing/recency.py (apply), the key layout is
-- worker/state/recency.py. An occurrence is the text `<time>:<deleted>`: the time in fixed-width decimal
-- (microseconds since year 1), deleted '0' or '1'. Compared as strings they order exactly as the rule orders
-- occurrences (by time, then a deletion after an update), without Lua's floating point.
-- KEYS[1]: the group's newest occurrence; then the keys of each step, in order:
--   'seen':    the change's latest part time
--   'emitted': the tag's verdict
--   'change':  the tag's verdict, the change's latest part time
-- ARGV[1]: TTL of the newest; ARGV[2]: TTL of verdicts and change times; then per step: op, value:
--   'seen': the part's time; 'emitted': the occurrence; 'change': its occurrence, whose time the change's
--   latest part time replaces when one was seen.
-- Returns one verdict per step: 1 superseded, 0 not (always 0 for 'seen').
local newest_key, newest_ttl, step_ttl = KEYS[1], ARGV[1], ARGV[2]
local newest = redis.call('GET', newest_key)
local changed = false
local verdicts = {}
local k = 2
for a = 3, #ARGV, 2 do
  local op, value = ARGV[a], ARGV[a + 1]
  if op == 'seen' then
    local latest = redis.call('GET', KEYS[k])
    if not latest or value > latest then
      redis.call('SET', KEYS[k], value, 'EX', step_ttl)
    else
      redis.call('EXPIRE', KEYS[k], step_ttl)
    end
    k = k + 1
    verdicts[#verdicts + 1] = 0
  else
    local verdict_key = KEYS[k]
    k = k + 1
    if op == 'change' then
      local latest = redis.call('GET', KEYS[k])
      k = k + 1
      if latest then
        value = latest .. string.sub(value, -2)  -- the part time, with the change's ':<deleted>'
      end
    end
    local known = redis.call('GET', verdict_key)
    if known then  -- this tag ran before: its verdict, and nothing changes
      verdicts[#verdicts + 1] = tonumber(known)
    else
      local superseded = 0
      if newest and value < newest then
        superseded = 1
      elseif value ~= newest then
        newest, changed = value, true
      end
      redis.call('SET', verdict_key, superseded, 'EX', step_ttl)
      verdicts[#verdicts + 1] = superseded
    end
  end
end
if changed then
  redis.call('SET', newest_key, newest, 'EX', newest_ttl)
elseif newest then
  redis.call('EXPIRE', newest_key, newest_ttl)
end
return verdicts
