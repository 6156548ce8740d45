-- A worker claims the attempt it was handed. Only the current attempt, on the node and
-- incarnation it was placed on, and only once: duplicates and stale deliveries get 0.
-- The claimed job's spec comes back with the answer (one round trip for the worker).
-- KEYS: job, attempts, events, placing   ARGV: job_id, attempt, node, incarnation, now
local j = hmget(KEYS[1], 'state', 'attempt', 'node', 'incarnation')
if j[2] ~= ARGV[2] or j[3] ~= ARGV[3] or j[4] ~= ARGV[4] then return {0, 'superseded'} end
if j[1] ~= 'PLACED' then return {0, 'job is ' .. tostring(j[1])} end
redis.pcall('ZREM', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'RUNNING', 'started_at', ARGV[5], 'updated_at', ARGV[5])
update_attempt(KEYS[2], ARGV[2], {started_at = tonumber(ARGV[5])})
event(KEYS[3], 'started', ARGV[1], ARGV[5], 'node', ARGV[3], 'attempt', ARGV[2])
return {1, 'ok', redis.call('HGET', KEYS[1], 'spec')}
