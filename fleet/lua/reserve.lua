-- Reserve a pending job on a node, or refuse: never over-commits, whatever runs concurrently.
-- KEYS: job, node report, node alloc, node drain, pending, attempts, events, placing
-- ARGV: job_id, node_id, incarnation, now, placement(json), score
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'PENDING' then return {0, 'job is ' .. tostring(state)} end
if redis.call('EXISTS', KEYS[4]) == 1 then return {0, 'node is draining'} end
if redis.call('HGET', KEYS[2], 'incarnation') ~= ARGV[3] then return {0, 'node is gone'} end
local cap = cjson.decode(redis.call('HGET', KEYS[2], 'capacity'))
local req = cjson.decode(redis.call('HGET', KEYS[1], 'request'))
local used = {cpus_m = 0, memory = 0, gpus = 0}
for _, raw in ipairs(redis.call('HVALS', KEYS[3])) do
  local a = cjson.decode(raw)
  for r, _ in pairs(used) do used[r] = used[r] + (a[r] or 0) end
end
for r, _ in pairs(used) do
  if used[r] + (req[r] or 0) > (cap[r] or 0) then return {0, 'no room for ' .. r} end
end
local n = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[3], ARGV[1], cjson.encode({attempt = n, incarnation = ARGV[3],
  cpus_m = req.cpus_m, memory = req.memory, gpus = req.gpus}))
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'PLACED', 'node', ARGV[2], 'incarnation', ARGV[3],
  'placed_at', ARGV[4], 'updated_at', ARGV[4], 'placement', ARGV[5], 'waiting', '')
update_attempt(KEYS[6], n, {node = ARGV[2], incarnation = ARGV[3], placed_at = tonumber(ARGV[4])})
redis.call('ZADD', KEYS[8], ARGV[4], ARGV[1])
event(KEYS[7], 'placed', ARGV[1], ARGV[4], 'node', ARGV[2], 'attempt', n, 'score', ARGV[6])
return {n, 'ok'}
