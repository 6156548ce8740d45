-- Take or renew the master lease; the holder's id decides (a stalled master never renews
-- another's). Each time it is held, `seen` gets Redis's own clock: how long no master has held
-- the lease is then measured on one clock, whatever the clocks of the readers.
--- KEYS lease seen
--- ARGV holder ttl_ms
local current = redis.call('GET', K.lease)
if current == A.holder then
  redis.call('PEXPIRE', K.lease, A.ttl_ms)
elseif not current then
  redis.call('SET', K.lease, A.holder, 'PX', A.ttl_ms)
else
  return 0
end
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
redis.call('SET', K.seen, string.format('%d.%06d', tonumber(t[1]), tonumber(t[2])))
return 1
