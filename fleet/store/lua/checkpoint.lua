-- Commit a checkpoint an attempt has finished writing: it becomes the one the job's next
-- attempt resumes from (the one it replaces is kept as the fallback). Fenced like every step:
-- only the job's current attempt, running on the node and incarnation it was placed on, may
-- commit. A superseded attempt's checkpoint never becomes the job's.
-- KEYS: job, attempts   ARGV: job_id, attempt, node, incarnation, checkpoint(json), step, now
local j = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'node', 'incarnation', 'checkpoint')
if j[2] ~= ARGV[2] or j[3] ~= ARGV[3] or j[4] ~= ARGV[4] then return {0, 'superseded'} end
if j[1] ~= 'RUNNING' then return {0, 'job is ' .. tostring(j[1])} end
if j[5] and j[5] ~= ARGV[5] then redis.call('HSET', KEYS[1], 'checkpoint_prev', j[5]) end
redis.call('HSET', KEYS[1], 'checkpoint', ARGV[5], 'updated_at', ARGV[7])
update_attempt(KEYS[2], ARGV[2], {committed_step = tonumber(ARGV[6])})
return {1, 'ok'}
