-- Commit a checkpoint an attempt has finished writing: it becomes the one the job's next
-- attempt resumes from (the one it replaces is kept as the fallback). Fenced like every step:
-- only the job's current attempt, running on the node and incarnation it was placed on, may
-- commit. A superseded attempt's checkpoint never becomes the job's.
--- KEYS job attempts
--- ARGV job_id attempt node incarnation checkpoint step now
local j = redis.call('HMGET', K.job, 'state', 'attempt', 'node', 'incarnation', 'checkpoint')
if j[2] ~= A.attempt or j[3] ~= A.node or j[4] ~= A.incarnation then return {0, 'superseded'} end
if j[1] ~= 'RUNNING' then return {0, 'job is ' .. tostring(j[1])} end
if j[5] and j[5] ~= A.checkpoint then redis.call('HSET', K.job, 'checkpoint_prev', j[5]) end
redis.call('HSET', K.job, 'checkpoint', A.checkpoint, 'updated_at', A.now)
update_attempt(K.attempts, A.attempt, {committed_step = tonumber(A.step)})
return {1, 'ok'}
