-- A node's heartbeat: renew its lease and report, unless another live incarnation holds the id.
-- Answers {1, incarnation, continued}: continued = 1 when the lease still held (this
-- incarnation's key had not expired); 0 when it is taken anew, so the node fences what it ran.
-- KEYS: node report, nodes, history   ARGV: node, incarnation, capacity(json), report(json),
--       ttl_ms, sample(json), history cap
-- The node owns its report and history keys: one of the wrong type (not written by a heartbeat)
-- is replaced, and the shared NODES set and the history are written best-effort, so that
-- nothing written over them can stop a live node's lease from being renewed.
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
local holder = redis.call('HGET', KEYS[1], 'incarnation')
if holder and holder ~= ARGV[2] then
  -- A live twin writes its incarnation into its report too, in this same step; a holder its own
  -- report does not name was written by something else, and is not a twin.
  local ok, report = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'report') or '')
  if ok and type(report) == 'table' and report.incarnation == holder then return {0, holder} end
end
redis.call('HSET', KEYS[1], 'incarnation', ARGV[2], 'capacity', ARGV[3], 'report', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.pcall('SADD', KEYS[2], ARGV[1])
kind = redis.call('TYPE', KEYS[3]).ok
if kind ~= 'list' and kind ~= 'none' then redis.call('DEL', KEYS[3]) end
redis.call('RPUSH', KEYS[3], ARGV[6])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[7]), -1)
return {1, ARGV[2], holder == ARGV[2] and 1 or 0}
