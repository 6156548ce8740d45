-- Record a progress report of the current running attempt; 0 tells a stale attempt to stop.
-- KEYS: job, metrics, attempts, events   ARGV: job_id, attempt, report(json), now, kind, cap
local j = redis.call('HMGET', KEYS[1], 'state', 'attempt')
if j[2] ~= ARGV[2] or j[1] ~= 'RUNNING' then return 0 end
if ARGV[5] == 'resumed' then
  local r = cjson.decode(ARGV[3])
  update_attempt(KEYS[3], ARGV[2], {resumed_from_step = r.step})
  event(KEYS[4], 'resumed', ARGV[1], ARGV[4], 'attempt', ARGV[2], 'step', r.step)
  return 1
end
redis.call('HSET', KEYS[1], 'progress', ARGV[3], 'updated_at', ARGV[4])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
return 1
