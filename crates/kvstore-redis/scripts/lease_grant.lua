-- lease_grant (standalone, without the prelude: a grant reads no key, so it needs no
-- expiry of due leases first, nor the revision counter).
-- KEYS[1] the leases sorted set, KEYS[2] the lease TTL hash, KEYS[3] the key that exists
-- while no lease is due ("{ns}:lease-next", see lib.lua); ARGV[1] the TTL in ms, ARGV[2]
-- a random 63-bit lease id chosen by the client (random, so an id can never alias
-- another client's lease, even after Redis lost its data and any counter would start
-- again; a string throughout, as a Lua number cannot hold it exactly).
-- -> {'ok', id} | {'taken'} when the id is in use (the client draws another)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[1])
if redis.call('ZADD', KEYS[1], 'NX', string.format('%d', deadline), ARGV[2]) == 0 then
  return { 'taken' }
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
-- KEYS[3] must be gone by this deadline. Its PTTL counts from the script's start, which
-- is no later than `now`: `now + left` is its expiry or later, so it is lowered whenever
-- it might be too late (lowering is always safe). Absent, it is already "look".
local left = redis.call('PTTL', KEYS[3])
if left == -1 or (left >= 0 and now + left >= deadline) then
  redis.call('PEXPIREAT', KEYS[3], string.format('%d', deadline - 1))
end
return { 'ok', ARGV[2] }
