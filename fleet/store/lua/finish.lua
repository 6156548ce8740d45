-- End an attempt: release its reservation, then either end the job (exactly once) or send it
-- back to pending as a new attempt. Fenced: only the current attempt may end it. The attempt's
-- last progress reports, when its supervisor had not sent them yet, come with it.
--- KEYS job attempts alloc pending events wake placing cancel metrics
--- ARGV job_id attempt outcome reason error result counted now backoff_s extra cap ...
-- alloc: the node's; cancel: the job's cancel flag; outcome: SUCCEEDED|FAILED|FAILURE|CANCELLED;
-- result, extra (merged into the attempt record): JSON; counted: 0|1; cap: reports kept in
-- metrics; the extra values are the last progress reports (JSON), oldest first
local j = hmget(K.job, 'state', 'attempt', 'retries', 'infra_retries',
  'max_retries', 'max_infra_retries', 'priority', 'seq')
if j[2] ~= A.attempt then return {0, 'superseded'} end
if j[1] == 'PENDING' or TERMINAL[j[1]] then return {0, 'job is ' .. tostring(j[1])} end
local now = A.now
if j[1] == 'RUNNING' then record_progress(K.job, K.metrics, REST, now, A.cap) end
release(K.alloc, A.job_id, A.attempt)
redis.pcall('ZREM', K.placing, A.job_id)
local rec = cjson.decode(A.extra)
rec.ended_at = tonumber(now); rec.end_reason = A.reason; rec.counted = (A.counted == '1')
if A.error ~= '' then rec.error = A.error end
update_attempt(K.attempts, A.attempt, rec)

local final = A.outcome
if final == 'FAILURE' then
  local retries, infra = tonumber(j[3]) or 0, tonumber(j[4]) or 0
  if A.counted == '1' then retries = retries + 1 else infra = infra + 1 end
  redis.call('HSET', K.job, 'retries', retries, 'infra_retries', infra)
  if redis.call('EXISTS', K.cancel) == 1 then
    final = 'CANCELLED'
  elseif retries > (tonumber(j[5]) or 0) or infra > (tonumber(j[6]) or 0) then
    final = 'FAILED'
  else
    local delay = 0
    if A.counted == '1' then delay = tonumber(A.backoff_s) * 2 ^ (retries - 1) end
    redis.call('HSET', K.job, 'state', 'PENDING', 'node', '', 'incarnation', '',
      'updated_at', now, 'not_before', tonumber(now) + delay,
      'waiting', 'retrying after ' .. A.reason)
    redis.pcall('ZADD', K.pending, pending_score(j[7], j[8]), A.job_id)
    event(K.events, 'retrying', A.job_id, now, 'attempt', A.attempt, 'reason', A.reason)
    wake(K.wake)
    return {1, 'PENDING'}
  end
end
redis.call('HSET', K.job, 'state', final, 'finished_at', now, 'updated_at', now,
  'reason', A.reason, 'error', A.error, 'result', A.result)
redis.call('DEL', K.cancel)
event(K.events, 'finished', A.job_id, now, 'state', final, 'reason', A.reason)
wake(K.wake)
return {1, final}
