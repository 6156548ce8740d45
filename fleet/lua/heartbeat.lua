-- A node's heartbeat: renew its lease and report, unless another live incarnation holds the id.
-- Answers {1, incarnation, continued}: continued = 1 when the lease still held (this
-- incarnation's key had not expired); 0 when it is taken anew, so the node fences what it ran.
-- KEYS: node report, nodes, history   ARGV: node, incarnation, capacity(json), report(json),
--       ttl_ms, sample(json), history cap
local holder = redis.call('HGET', KEYS[1], 'incarnation')
if holder and holder ~= ARGV[2] then return {0, holder} end
redis.call('HSET', KEYS[1], 'incarnation', ARGV[2], 'capacity', ARGV[3], 'report', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[6])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[7]), -1)
return {1, ARGV[2], holder == ARGV[2] and 1 or 0}
