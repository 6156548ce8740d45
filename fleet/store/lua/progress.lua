-- Record progress reports of the current running attempt; 0 tells a stale attempt to stop.
-- KEYS: job, metrics, attempts, events   ARGV: job_id, attempt, now, kind, cap, report(json)...
local j = hmget(KEYS[1], 'state', 'attempt')
if j[2] ~= ARGV[2] or j[1] ~= 'RUNNING' then return 0 end
if ARGV[4] == 'resumed' then
  local r = cjson.decode(ARGV[6])
  update_attempt(KEYS[3], ARGV[2], {resumed_from_step = r.step})
  event(KEYS[4], 'resumed', ARGV[1], ARGV[3], 'attempt', ARGV[2], 'step', r.step)
  return 1
end
record_progress(KEYS[1], KEYS[2], 6, ARGV[3], ARGV[5])
return 1
