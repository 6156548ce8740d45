-- Refuse a request from an intake: the job ends FAILED (REJECTED) with the error, so a producer
-- waiting on it learns why. A job id that exists already is left as it is (never overwritten).
-- KEYS: job, jobs, events   ARGV: job_id, now, error, submitted_by, name
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'name', ARGV[5], 'state', 'FAILED',
  'reason', 'REJECTED', 'error', ARGV[3], 'attempt', 0, 'retries', 0, 'infra_retries', 0,
  'submitted_at', ARGV[2], 'finished_at', ARGV[2], 'updated_at', ARGV[2],
  'submitted_by', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
event(KEYS[3], 'finished', ARGV[1], ARGV[2], 'state', 'FAILED', 'reason', 'REJECTED')
return 1
