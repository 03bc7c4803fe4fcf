-- lease_keep_alive: ARGV[3] lease id -> TTL in ms, or -1 when the lease is gone
local id = ARGV[3]
local ttl = tonumber(redis.call('HGET', LEASE_TTL, id))
if not ttl or not redis.call('ZSCORE', LEASES, id) then return -1 end
redis.call('ZADD', LEASES, int(clock() + ttl), id)
return ttl
