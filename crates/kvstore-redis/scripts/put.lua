-- put: ARGV[3] area, ARGV[4] key, ARGV[5] value, ARGV[6] condition ('always', 'absent'
-- or 'revision'), ARGV[7] expected revision, ARGV[8] lease id or '', ARGV[9] a TTL in ms
-- or '' (absent: a plain put).
-- With a TTL, ARGV[8] is a new lease to create (a TTL put, one round trip instead of a
-- grant then a put): a random 63-bit id drawn by the client as for lease_grant, created
-- with that TTL only if the write happens, so a failed condition leaves no lease. Exact
-- because nobody knows the id before this returns.
-- -> {'ok', revision, create_revision} | {'exists'|'not_found'|'modified'|'no_lease', actual revision}
--    | {'taken', 0} when the new lease id is in use (the client draws another)
local area, key, value, condition, expected, lease = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ttl = ARGV[9]
local dk = data_key(area, key)
local current = redis.call('HMGET', dk, 'revision', 'create_revision', 'lease')
local exists = current[1] ~= false
if condition == 'absent' and exists then return { 'exists', tonumber(current[1]) } end
if condition == 'revision' then
  if not exists then return { 'not_found', 0 } end
  if current[1] ~= expected then return { 'modified', tonumber(current[1]) } end
end
local new_lease = ttl and ttl ~= ''
if lease ~= '' then
  local known = redis.call('ZSCORE', LEASES, lease)
  if new_lease and known then return { 'taken', 0 } end
  if not new_lease and not known then return { 'no_lease', 0 } end
end
local rev, srev, fresh = revision_to_write()
local crev, screv = rev, srev
if exists then
  -- as written by this script, formatted with int()
  screv = current[2]
  crev = tonumber(screv)
end
log_put(srev, 0, '1', area, key, value, screv, lease)
commit_revision(srev, fresh)
if new_lease then
  -- As lease_grant: the deadline on the server's clock, and LEASE_NEXT (see lib.lua)
  -- gone by then. Its PTTL counts from the script's start, no later than `now`, so
  -- `now + left` is its expiry or later: lowered whenever it might be too late.
  local now = clock()
  local deadline = now + tonumber(ttl)
  redis.call('ZADD', LEASES, int(deadline), lease)
  redis.call('HSET', LEASE_TTL, lease, ttl)
  local left = redis.call('PTTL', LEASE_NEXT)
  if left == -1 or (left >= 0 and now + left >= deadline) then
    redis.call('PEXPIREAT', LEASE_NEXT, int(deadline - 1))
  end
end
-- One HSET rewrites every field; only a lease the key no longer has must go (HDEL),
-- and its lease's key set must forget the key (unless it stays on the same lease).
local old = current[3] or ''
if exists and old ~= '' and old ~= lease then detach(area, key, old) end
if lease ~= '' then
  redis.call('HSET', dk, 'value', value, 'revision', srev, 'create_revision', screv, 'lease', lease)
  redis.call('SADD', lease_members(lease), area .. '\0' .. key)
else
  redis.call('HSET', dk, 'value', value, 'revision', srev, 'create_revision', screv)
  if old ~= '' then redis.call('HDEL', dk, 'lease') end
end
if not exists then redis.call('ZADD', index_key(area), 0, key) end
return { 'ok', rev, crev }
