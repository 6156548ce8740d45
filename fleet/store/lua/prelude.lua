-- Shared by every fleet script (prepended when loaded). KEYS/ARGV are the script's own: after
-- this prelude, fleet.store.scripts names them (K.<key>, A.<arg>, REST) as the script declares.
-- Records are read defensively: whatever was written over a key (another type, bad JSON), a
-- step of a job's life still runs; an unreadable record counts as absent or as "not ours".

-- The key, emptied first when it holds another type than `kind` (its content is lost already).
local function own(key, kind)
  local t = redis.call('TYPE', key).ok
  if t ~= kind and t ~= 'none' then redis.call('DEL', key) end
end

-- A JSON object, or nil when `raw` is missing or not one.
local function decode(raw)
  if not raw then return nil end
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' then return value end
  return nil
end

-- HMGET of a record that is a hash; {} (every field absent) when it is another type.
local function hmget(key, ...)
  if redis.call('TYPE', key).ok ~= 'hash' then return {} end
  return redis.call('HMGET', key, ...)
end

-- Events are for people and tools; a stream written over must not stop a job's step.
local function event(stream, name, job, now, ...)
  redis.pcall('XADD', stream, 'MAXLEN', '~', 100000, '*', 'event', name, 'job', job, 'time', now, ...)
end

-- Indexes (pending, placing, wake) are written best-effort: one written over with another
-- type fails its command, not the step; the master moves it aside and rebuilds it from the
-- job records.
local function wake(list)
  redis.pcall('LPUSH', list, '1')
  redis.pcall('LTRIM', list, 0, 0)
end

local TERMINAL = {SUCCEEDED = true, FAILED = true, CANCELLED = true}

-- A pending job's place in line: priority first (higher sooner), then submit order. The master
-- rebuilds the index with the same formula (fleet.store.jobstore.pending_score).
local function pending_score(priority, seq)
  return (1000 - (tonumber(priority) or 0)) * 1e12 + (tonumber(seq) or 0)
end

-- A script that fails half-way keeps what it wrote before (Redis does not roll back), so this
-- step cannot fail: a record written over with what JSON cannot hold again (1e999 decodes to
-- inf; NaN, nesting past cjson's depth) is started anew from this step's fields.
local function update_attempt(attempts, n, fields)
  own(attempts, 'hash')
  local rec = decode(redis.call('HGET', attempts, tostring(n))) or {}
  rec.attempt = tonumber(n)
  for k, v in pairs(fields) do rec[k] = v end
  local ok, raw = pcall(cjson.encode, rec)
  if not ok then
    rec = {attempt = tonumber(n)}
    for k, v in pairs(fields) do rec[k] = v end
    raw = cjson.encode(rec)
  end
  redis.call('HSET', attempts, tostring(n), raw)
end

-- The reservation of `job` on a node, released only by the attempt that holds it (an entry
-- nobody can read is released too: the master rewrites it when a live attempt holds it).
local function release(alloc, job, attempt)
  if redis.call('TYPE', alloc).ok ~= 'hash' then return end
  local raw = redis.call('HGET', alloc, job)
  if not raw then return end
  local a = decode(raw)
  if not a or tostring(a.attempt) == tostring(attempt) then
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
  own(metrics, 'list')
  for i = 1, #reports, 1000 do
    redis.call('RPUSH', metrics, unpack(reports, i, math.min(i + 999, #reports)))
  end
  redis.call('LTRIM', metrics, -tonumber(cap), -1)
end
