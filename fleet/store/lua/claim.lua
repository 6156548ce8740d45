-- A worker claims the attempt it was handed. Only the current attempt, on the node and
-- incarnation it was placed on, and only once: duplicates and stale deliveries get 0.
-- The claimed job's spec comes back with the answer (one round trip for the worker).
--- KEYS job attempts events placing
--- ARGV job_id attempt node incarnation now
local j = hmget(K.job, 'state', 'attempt', 'node', 'incarnation')
if j[2] ~= A.attempt or j[3] ~= A.node or j[4] ~= A.incarnation then return {0, 'superseded'} end
if j[1] ~= 'PLACED' then return {0, 'job is ' .. tostring(j[1])} end
redis.pcall('ZREM', K.placing, A.job_id)
redis.call('HSET', K.job, 'state', 'RUNNING', 'started_at', A.now, 'updated_at', A.now)
redis.call('HDEL', K.job, 'phase')  -- an earlier attempt's
update_attempt(K.attempts, A.attempt, {started_at = tonumber(A.now)})
event(K.events, 'started', A.job_id, A.now, 'node', A.node, 'attempt', A.attempt)
return {1, 'ok', redis.call('HGET', K.job, 'spec')}
