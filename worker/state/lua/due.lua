-- Take the changes whose timeout is due, at most `limit`, oldest first, and move each one's deadline to
-- `resend` so the next scan (of any worker) takes the next ones instead of these, and sends these again only if
-- their command was lost. One key, so one Redis Cluster slot; the times compared are all worker clocks passed in
-- (a skewed clock only shifts when a change times out: its timeout command is harmless twice).
-- KEYS[1] gew:deadlines; ARGV: now ms, limit, resend ms. Returns the change ids taken.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, change_id in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], change_id)
end
return due
