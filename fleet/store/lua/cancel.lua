-- Cancel: a pending or placed job ends now; a running one is flagged for its supervisor.
--- KEYS job pending alloc attempts events wake placing cancel
--- ARGV job_id now node
-- alloc: the node's, as the caller read the job's node; cancel: the job's cancel flag
local j = hmget(K.job, 'state', 'attempt', 'node')
if not j[1] then return {0, 'no such job'} end
if TERMINAL[j[1]] then return {0, j[1]} end
if j[1] == 'RUNNING' then
  redis.call('SET', K.cancel, A.now)
  event(K.events, 'cancelling', A.job_id, A.now)
  return {1, 'CANCELLING'}
end
if j[1] == 'PLACED' then
  if j[3] ~= A.node then return {0, 'moved'} end
  release(K.alloc, A.job_id, j[2])
  redis.pcall('ZREM', K.placing, A.job_id)
  update_attempt(K.attempts, j[2], {ended_at = tonumber(A.now), end_reason = 'CANCELLED'})
end
redis.pcall('ZREM', K.pending, A.job_id)
redis.call('HSET', K.job, 'state', 'CANCELLED', 'reason', 'CANCELLED', 'finished_at', A.now,
  'updated_at', A.now, 'waiting', '')
event(K.events, 'finished', A.job_id, A.now, 'state', 'CANCELLED', 'reason', 'CANCELLED')
wake(K.wake)
return {1, 'CANCELLED'}
