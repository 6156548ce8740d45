-- A node's heartbeat: renew its lease and report, unless another live incarnation holds the id.
-- Answers {1, incarnation, continued}: continued = 1 when the lease still held (this
-- incarnation's key had not expired); 0 when it is taken anew, so the node fences what it ran.
-- `replaces` (or ''): an earlier incarnation of the same worker, taken over even while it holds.
--- KEYS report nodes history
--- ARGV node incarnation capacity report ttl_ms sample history_cap replaces
-- The node owns its report and history keys: one of the wrong type (not written by a heartbeat)
-- is replaced, and the shared NODES set and the history are written best-effort, so that
-- nothing written over them can stop a live node's lease from being renewed.
local kind = redis.call('TYPE', K.report).ok
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', K.report) end
local holder = redis.call('HGET', K.report, 'incarnation')
if holder and holder ~= A.incarnation and holder ~= A.replaces then
  -- A live twin writes its incarnation into its report too, in this same step; a holder its own
  -- report does not name was written by something else, and is not a twin.
  local ok, report = pcall(cjson.decode, redis.call('HGET', K.report, 'report') or '')
  if ok and type(report) == 'table' and report.incarnation == holder then return {0, holder} end
end
redis.call('HSET', K.report, 'incarnation', A.incarnation, 'capacity', A.capacity, 'report', A.report)
redis.call('PEXPIRE', K.report, A.ttl_ms)
redis.pcall('SADD', K.nodes, A.node)
kind = redis.call('TYPE', K.history).ok
if kind ~= 'list' and kind ~= 'none' then redis.call('DEL', K.history) end
redis.call('RPUSH', K.history, A.sample)
redis.call('LTRIM', K.history, -tonumber(A.history_cap), -1)
return {1, A.incarnation, holder == A.incarnation and 1 or 0}
