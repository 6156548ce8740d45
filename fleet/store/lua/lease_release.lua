-- Give the master lease up, only when this holder has it.
--- KEYS lease
--- ARGV holder
if redis.call('GET', K.lease) == A.holder then return redis.call('DEL', K.lease) end
return 0
