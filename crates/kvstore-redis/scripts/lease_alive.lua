-- lease_alive (standalone, without the prelude: a read must not write).
-- KEYS[1] the leases sorted set, ARGV[1] a lease id.
-- -> 1 while the lease's deadline is in the future by the server's clock, else 0
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(deadline) > now then return 1 end
return 0
