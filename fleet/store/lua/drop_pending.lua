-- A member of the pending set the master cannot place leaves the line: no job record, a record
-- of another type, a job in another state, or (`why` non-empty) a record too malformed to
-- read, whose job then ends FAILED (REJECTED) saying why, so that whoever waits on it hears so.
--- KEYS job pending events wake
--- ARGV job_id now why
redis.pcall('ZREM', K.pending, A.job_id)
if redis.call('TYPE', K.job).ok ~= 'hash' then return 'dropped' end
if redis.call('HGET', K.job, 'state') ~= 'PENDING' or A.why == '' then return 'dropped' end
redis.call('HSET', K.job, 'state', 'FAILED', 'reason', 'REJECTED', 'error', A.why,
  'finished_at', A.now, 'updated_at', A.now, 'waiting', '')
event(K.events, 'finished', A.job_id, A.now, 'state', 'FAILED', 'reason', 'REJECTED')
wake(K.wake)
return 'failed'
