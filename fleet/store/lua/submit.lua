-- Accept a job: record + pending entry + event, in one step (an acknowledged submission is durable).
-- KEYS: job, jobs, pending, seq, events, wake   ARGV: job_id, now, priority, fields(json)
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('job id exists: ' .. ARGV[1]) end
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'seq', seq, 'state', 'PENDING', 'attempt', 0,
  'retries', 0, 'infra_retries', 0, 'submitted_at', ARGV[2], 'updated_at', ARGV[2],
  'priority', ARGV[3])
for k, v in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', KEYS[1], k, v) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], pending_score(ARGV[3], seq), ARGV[1])
event(KEYS[5], 'submitted', ARGV[1], ARGV[2])
wake(KEYS[6])
return seq
