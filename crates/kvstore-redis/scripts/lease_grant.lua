-- lease_grant: ARGV[3] TTL in ms -> lease id
local ttl = tonumber(ARGV[3])
local id = redis.call('INCR', LEASE_IDS)
redis.call('ZADD', LEASES, NOW + ttl, id)
redis.call('HSET', LEASE_TTL, id, ttl)
return id
