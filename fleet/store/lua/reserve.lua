-- Reserve a pending job on a node, or refuse: never over-commits, whatever runs concurrently.
-- KEYS: job, node report, node alloc, node drain, pending, attempts, events, placing
-- ARGV: job_id, node_id, incarnation, now, placement(json), score
-- A record nobody can read refuses the reservation: an allocation entry that is not a
-- well-formed reservation could hide what the node holds (the master repairs it), and a
-- negative amount would make the node look emptier than it is.
local j = hmget(KEYS[1], 'state', 'request')
if j[1] ~= 'PENDING' then return {0, 'job is ' .. tostring(j[1])} end
if redis.call('EXISTS', KEYS[4]) == 1 then return {0, 'node is draining'} end
local node = hmget(KEYS[2], 'incarnation', 'capacity')
if node[1] ~= ARGV[3] then return {0, 'node is gone'} end
local cap, req = decode(node[2]), decode(j[2])
if not cap then return {0, 'node capacity unreadable'} end
if not req then return {0, 'job request unreadable'} end
-- Every field of the request is a kind of resource (fleet.resources writes it): no kind is
-- named here, so a new one needs no edit.
local used = {}
for r, need in pairs(req) do
  if type(r) ~= 'string' or r == 'attempt' or r == 'incarnation'
      or type(need) ~= 'number' or need < 0 or need ~= need then
    return {0, 'job request unreadable'}
  end
  used[r] = 0
end
if redis.call('TYPE', KEYS[3]).ok ~= 'hash' and redis.call('EXISTS', KEYS[3]) == 1 then
  return {0, 'node allocations unreadable'}
end
for _, raw in ipairs(redis.call('HVALS', KEYS[3])) do
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
local n = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
local entry = {attempt = n, incarnation = ARGV[3]}
for r, _ in pairs(used) do entry[r] = req[r] end
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode(entry))
redis.pcall('ZREM', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'PLACED', 'node', ARGV[2], 'incarnation', ARGV[3],
  'placed_at', ARGV[4], 'updated_at', ARGV[4], 'placement', ARGV[5], 'waiting', '')
update_attempt(KEYS[6], n, {node = ARGV[2], incarnation = ARGV[3], placed_at = tonumber(ARGV[4])})
redis.pcall('ZADD', KEYS[8], ARGV[4], ARGV[1])
event(KEYS[7], 'placed', ARGV[1], ARGV[4], 'node', ARGV[2], 'attempt', n, 'score', ARGV[6])
return {n, 'ok'}
