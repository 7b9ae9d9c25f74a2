-- A timeout flush's output is durable in Kafka: release its lease so the change counts as closed for good.
-- KEYS[1] meta hash; ARGV[1] token. Returns 1 if this token still held the lease.
if redis.call('HGET', KEYS[1], 'lease') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'lease', 'lease_until')
  return 1
end
return 0
