-- Accept a job: record + pending entry + event, in one step (an acknowledged submission is durable).
--- KEYS job jobs pending seq events wake
--- ARGV job_id now priority fields
-- fields: JSON object of the record's other fields
if redis.call('EXISTS', K.job) == 1 then return redis.error_reply('job id exists: ' .. A.job_id) end
local seq = redis.call('INCR', K.seq)
redis.call('HSET', K.job, 'id', A.job_id, 'seq', seq, 'state', 'PENDING', 'attempt', 0,
  'retries', 0, 'infra_retries', 0, 'submitted_at', A.now, 'updated_at', A.now,
  'priority', A.priority)
for k, v in pairs(cjson.decode(A.fields)) do redis.call('HSET', K.job, k, v) end
redis.call('ZADD', K.jobs, A.now, A.job_id)
redis.call('ZADD', K.pending, pending_score(A.priority, seq), A.job_id)
event(K.events, 'submitted', A.job_id, A.now)
wake(K.wake)
return seq
