-- A member of the pending set the master cannot place leaves the line: no job record, a record
-- of another type, a job in another state, or (ARGV[3] non-empty) a record too malformed to
-- read, whose job then ends FAILED (REJECTED) saying why, so that whoever waits on it hears so.
-- KEYS: job, pending, events, wake   ARGV: job_id, now, why (empty: the record is readable)
redis.pcall('ZREM', KEYS[2], ARGV[1])
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 'dropped' end
if redis.call('HGET', KEYS[1], 'state') ~= 'PENDING' or ARGV[3] == '' then return 'dropped' end
redis.call('HSET', KEYS[1], 'state', 'FAILED', 'reason', 'REJECTED', 'error', ARGV[3],
  'finished_at', ARGV[2], 'updated_at', ARGV[2], 'waiting', '')
event(KEYS[3], 'finished', ARGV[1], ARGV[2], 'state', 'FAILED', 'reason', 'REJECTED')
wake(KEYS[4])
return 'failed'
