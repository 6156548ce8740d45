-- Repair one entry of a node's allocation hash from the job's own record, which reserve,
-- finish and cancel keep in step with it: the job that holds a reservation on this node (PLACED
-- or RUNNING there) gets its entry rewritten from its record; any other entry (unreadable, of a
-- job that does not exist or holds nothing here) is dropped. A holder whose request cannot be
-- read is given the whole node, so a repair never makes a node look emptier than it is.
--- KEYS alloc job report
--- ARGV job_id node
if redis.call('TYPE', K.alloc).ok ~= 'hash' then return 'not a hash' end
local j = hmget(K.job, 'state', 'node', 'attempt', 'incarnation', 'request')
if (j[1] ~= 'PLACED' and j[1] ~= 'RUNNING') or j[2] ~= A.node then
  redis.call('HDEL', K.alloc, A.job_id)
  return 'dropped'
end
local rec = {attempt = math.max(tonumber(j[3]) or 1, 1), incarnation = j[4] or '-'}
if rec.incarnation == '' then rec.incarnation = '-' end
local req = decode(j[5])
local whole = not req
if req then
  for _, r in ipairs({'cpus_m', 'memory', 'gpus'}) do
    local v = req[r] or 0
    if type(v) ~= 'number' or v < 0 or v ~= v or v > 2^53 then whole = true end
  end
end
if whole then req = decode(hmget(K.report, 'capacity')[1]) or {} end
for _, r in ipairs({'cpus_m', 'memory', 'gpus'}) do
  local v = req[r]
  if type(v) ~= 'number' or v < 0 or v ~= v or v > 2^53 then v = 0 end
  rec[r] = math.floor(v)
end
if whole and rec.cpus_m == 0 then rec.cpus_m = 1024000 end
redis.call('HSET', K.alloc, A.job_id, cjson.encode(rec))
return 'rewritten'
