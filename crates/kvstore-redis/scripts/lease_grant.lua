-- lease_grant: ARGV[3] TTL in ms, ARGV[4] a random 63-bit lease id chosen by the client
-- (random, so an id can never alias another client's lease, even after Redis lost its
-- data and any counter would start again).
-- -> {'ok', id} | {'taken'} when the id is in use (the client draws another)
local ttl, id = tonumber(ARGV[3]), ARGV[4]
if redis.call('ZSCORE', LEASES, id) then return { 'taken' } end
redis.call('ZADD', LEASES, int(clock() + ttl), id)
redis.call('HSET', LEASE_TTL, id, int(ttl))
return { 'ok', id }
