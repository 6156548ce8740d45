-- End an attempt: release its reservation, then either end the job (exactly once) or send it
-- back to pending as a new attempt. Fenced: only the current attempt may end it. The attempt's
-- last progress reports, when its supervisor had not sent them yet, come with it.
-- KEYS: job, attempts, node alloc, pending, events, wake, placing, cancel flag, metrics
-- ARGV: job_id, attempt, outcome (SUCCEEDED|FAILED|FAILURE|CANCELLED), reason, error,
--       result(json), counted(0|1), now, backoff_s, attempt_extra(json), metrics cap,
--       progress report(json)...
local j = hmget(KEYS[1], 'state', 'attempt', 'retries', 'infra_retries',
  'max_retries', 'max_infra_retries', 'priority', 'seq')
if j[2] ~= ARGV[2] then return {0, 'superseded'} end
if j[1] == 'PENDING' or TERMINAL[j[1]] then return {0, 'job is ' .. tostring(j[1])} end
local now = ARGV[8]
if j[1] == 'RUNNING' then record_progress(KEYS[1], KEYS[9], 12, now, ARGV[11]) end
release(KEYS[3], ARGV[1], ARGV[2])
redis.pcall('ZREM', KEYS[7], ARGV[1])
local rec = cjson.decode(ARGV[10])
rec.ended_at = tonumber(now); rec.end_reason = ARGV[4]; rec.counted = (ARGV[7] == '1')
if ARGV[5] ~= '' then rec.error = ARGV[5] end
update_attempt(KEYS[2], ARGV[2], rec)

local final = ARGV[3]
if final == 'FAILURE' then
  local retries, infra = tonumber(j[3]) or 0, tonumber(j[4]) or 0
  if ARGV[7] == '1' then retries = retries + 1 else infra = infra + 1 end
  redis.call('HSET', KEYS[1], 'retries', retries, 'infra_retries', infra)
  if redis.call('EXISTS', KEYS[8]) == 1 then
    final = 'CANCELLED'
  elseif retries > (tonumber(j[5]) or 0) or infra > (tonumber(j[6]) or 0) then
    final = 'FAILED'
  else
    local delay = 0
    if ARGV[7] == '1' then delay = tonumber(ARGV[9]) * 2 ^ (retries - 1) end
    redis.call('HSET', KEYS[1], 'state', 'PENDING', 'node', '', 'incarnation', '',
      'updated_at', now, 'not_before', tonumber(now) + delay,
      'waiting', 'retrying after ' .. ARGV[4])
    redis.pcall('ZADD', KEYS[4], pending_score(j[7], j[8]), ARGV[1])
    event(KEYS[5], 'retrying', ARGV[1], now, 'attempt', ARGV[2], 'reason', ARGV[4])
    wake(KEYS[6])
    return {1, 'PENDING'}
  end
end
redis.call('HSET', KEYS[1], 'state', final, 'finished_at', now, 'updated_at', now,
  'reason', ARGV[4], 'error', ARGV[5], 'result', ARGV[6])
redis.call('DEL', KEYS[8])
event(KEYS[5], 'finished', ARGV[1], now, 'state', final, 'reason', ARGV[4])
wake(KEYS[6])
return {1, final}
