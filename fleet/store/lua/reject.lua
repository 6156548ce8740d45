-- Refuse a request from an intake: the job ends FAILED (REJECTED) with the error, so a producer
-- waiting on it learns why. A job id that exists already is left as it is (never overwritten).
--- KEYS job jobs events
--- ARGV job_id now error submitted_by name
if redis.call('EXISTS', K.job) == 1 then return 0 end
redis.call('HSET', K.job, 'id', A.job_id, 'name', A.name, 'state', 'FAILED',
  'reason', 'REJECTED', 'error', A.error, 'attempt', 0, 'retries', 0, 'infra_retries', 0,
  'submitted_at', A.now, 'finished_at', A.now, 'updated_at', A.now,
  'submitted_by', A.submitted_by)
redis.call('ZADD', K.jobs, A.now, A.job_id)
event(K.events, 'finished', A.job_id, A.now, 'state', 'FAILED', 'reason', 'REJECTED')
return 1
