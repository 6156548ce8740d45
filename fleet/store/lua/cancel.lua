-- Cancel: a pending or placed job ends now; a running one is flagged for its supervisor.
-- KEYS: job, pending, node alloc, attempts, events, wake, placing, cancel flag
-- ARGV: job_id, now, node (as the caller read it)
local j = hmget(KEYS[1], 'state', 'attempt', 'node')
if not j[1] then return {0, 'no such job'} end
if TERMINAL[j[1]] then return {0, j[1]} end
if j[1] == 'RUNNING' then
  redis.call('SET', KEYS[8], ARGV[2])
  event(KEYS[5], 'cancelling', ARGV[1], ARGV[2])
  return {1, 'CANCELLING'}
end
if j[1] == 'PLACED' then
  if j[3] ~= ARGV[3] then return {0, 'moved'} end
  release(KEYS[3], ARGV[1], j[2])
  redis.pcall('ZREM', KEYS[7], ARGV[1])
  update_attempt(KEYS[4], j[2], {ended_at = tonumber(ARGV[2]), end_reason = 'CANCELLED'})
end
redis.pcall('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'reason', 'CANCELLED', 'finished_at', ARGV[2],
  'updated_at', ARGV[2], 'waiting', '')
event(KEYS[5], 'finished', ARGV[1], ARGV[2], 'state', 'CANCELLED', 'reason', 'CANCELLED')
wake(KEYS[6])
return {1, 'CANCELLED'}
