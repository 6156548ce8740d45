-- Record progress reports of the current running attempt; 0 tells a stale attempt to stop.
--- KEYS job metrics attempts events
--- ARGV job_id attempt now kind cap ...
-- cap: reports kept in metrics; the extra values are the reports (JSON), oldest first
-- kind: progress, resumed, or preparing/prepared (the job's env: {env, built, seconds}), or
-- note: fields the supervisor sets on the attempt record (null clears one), e.g. checkpoint_upload
local j = hmget(K.job, 'state', 'attempt')
if j[2] ~= A.attempt or j[1] ~= 'RUNNING' then return 0 end
if A.kind == 'resumed' then
  local r = cjson.decode(ARGV[REST])
  update_attempt(K.attempts, A.attempt, {resumed_from_step = r.step})
  event(K.events, 'resumed', A.job_id, A.now, 'attempt', A.attempt, 'step', r.step)
  return 1
end
if A.kind == 'note' then
  update_attempt(K.attempts, A.attempt, decode(ARGV[REST]) or {})
  return 1
end
if A.kind == 'preparing' then  -- its env is being built (or waited for): the job's phase
  local r = decode(ARGV[REST]) or {}
  redis.call('HSET', K.job, 'phase', 'PREPARING', 'updated_at', A.now)
  event(K.events, 'preparing', A.job_id, A.now, 'attempt', A.attempt, 'env', tostring(r.env))
  return 1
end
if A.kind == 'prepared' then
  local r = decode(ARGV[REST]) or {}
  redis.call('HDEL', K.job, 'phase')
  update_attempt(K.attempts, A.attempt, {env = r.env, env_built = r.built, env_seconds = r.seconds})
  event(K.events, 'prepared', A.job_id, A.now, 'attempt', A.attempt, 'env', tostring(r.env),
        'built', tostring(r.built), 'seconds', tostring(r.seconds))
  return 1
end
record_progress(K.job, K.metrics, REST, A.now, A.cap)
return 1
