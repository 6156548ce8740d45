-- Reserve a pending job on a node, or refuse: never over-commits, whatever runs concurrently.
--- KEYS job report alloc drain pending attempts events placing
--- ARGV job_id node incarnation now placement score
-- report, alloc, drain: the node's; placement: JSON of the decision
-- A record nobody can read refuses the reservation: an allocation entry that is not a
-- well-formed reservation could hide what the node holds (the master repairs it), and a
-- negative amount would make the node look emptier than it is.
local j = hmget(K.job, 'state', 'request')
if j[1] ~= 'PENDING' then return {0, 'job is ' .. tostring(j[1])} end
if redis.call('EXISTS', K.drain) == 1 then return {0, 'node is draining'} end
local node = hmget(K.report, 'incarnation', 'capacity')
if node[1] ~= A.incarnation then return {0, 'node is gone'} end
local cap, req = decode(node[2]), decode(j[2])
if not cap then return {0, 'node capacity unreadable'} end
if not req then return {0, 'job request unreadable'} end
local used = {cpus_m = 0, memory = 0, gpus = 0}
for r, _ in pairs(used) do
  local need = req[r] or 0
  if type(need) ~= 'number' or need < 0 or need ~= need then
    return {0, 'job request unreadable'}
  end
end
if redis.call('TYPE', K.alloc).ok ~= 'hash' and redis.call('EXISTS', K.alloc) == 1 then
  return {0, 'node allocations unreadable'}
end
for _, raw in ipairs(redis.call('HVALS', K.alloc)) do
  local a = decode(raw)
  if not a then return {0, 'node allocations unreadable'} end
  for r, _ in pairs(used) do
    local v = a[r] or 0
    if type(v) ~= 'number' or v < 0 or v ~= v then return {0, 'node allocations unreadable'} end
    used[r] = used[r] + v
  end
end
for r, _ in pairs(used) do
  local have = cap[r] or 0
  if type(have) ~= 'number' then return {0, 'node capacity unreadable'} end
  if used[r] + (req[r] or 0) > have then return {0, 'no room for ' .. r} end
end
local n = redis.call('HINCRBY', K.job, 'attempt', 1)
redis.call('HSET', K.alloc, A.job_id, cjson.encode({attempt = n, incarnation = A.incarnation,
  cpus_m = req.cpus_m, memory = req.memory, gpus = req.gpus}))
redis.pcall('ZREM', K.pending, A.job_id)
redis.call('HSET', K.job, 'state', 'PLACED', 'node', A.node, 'incarnation', A.incarnation,
  'placed_at', A.now, 'updated_at', A.now, 'placement', A.placement, 'waiting', '')
update_attempt(K.attempts, n, {node = A.node, incarnation = A.incarnation, placed_at = tonumber(A.now)})
redis.pcall('ZADD', K.placing, A.now, A.job_id)
event(K.events, 'placed', A.job_id, A.now, 'node', A.node, 'attempt', n, 'score', A.score)
return {n, 'ok'}
