-- Shared by every fleet script (prepended when loaded). KEYS/ARGV are the script's own.
local function event(stream, name, job, now, ...)
  redis.call('XADD', stream, 'MAXLEN', '~', 100000, '*', 'event', name, 'job', job, 'time', now, ...)
end

local function wake(list)
  redis.call('LPUSH', list, '1')
  redis.call('LTRIM', list, 0, 0)
end

local TERMINAL = {SUCCEEDED = true, FAILED = true, CANCELLED = true}

local function update_attempt(attempts, n, fields)
  local raw = redis.call('HGET', attempts, tostring(n))
  local rec = raw and cjson.decode(raw) or {attempt = tonumber(n)}
  for k, v in pairs(fields) do rec[k] = v end
  redis.call('HSET', attempts, tostring(n), cjson.encode(rec))
end

-- The reservation of `job` on a node, released only by the attempt that holds it.
local function release(alloc, job, attempt)
  local raw = redis.call('HGET', alloc, job)
  if raw and tostring(cjson.decode(raw).attempt) == tostring(attempt) then
    redis.call('HDEL', alloc, job)
  end
end

-- Progress reports of the current running attempt, the JSON strings ARGV[first..] (oldest
-- first): the last one becomes the job's progress, all go to its metrics list (capped).
local function record_progress(job, metrics, first, now, cap)
  local reports = {}
  for i = first, #ARGV do reports[#reports + 1] = ARGV[i] end
  if #reports == 0 then return end
  redis.call('HSET', job, 'progress', reports[#reports], 'updated_at', now)
  for i = 1, #reports, 1000 do
    redis.call('RPUSH', metrics, unpack(reports, i, math.min(i + 999, #reports)))
  end
  redis.call('LTRIM', metrics, -tonumber(cap), -1)
end
