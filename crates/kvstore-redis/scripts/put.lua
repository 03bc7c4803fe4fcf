-- put: ARGV[3] area, ARGV[4] key, ARGV[5] value, ARGV[6] condition ('always', 'absent'
-- or 'revision'), ARGV[7] expected revision, ARGV[8] lease id or ''.
-- -> {'ok', revision, create_revision} | {'exists'|'not_found'|'modified'|'no_lease', actual revision}
local area, key, value, condition, expected, lease = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local dk = data_key(area, key)
local current = redis.call('HMGET', dk, 'revision', 'create_revision', 'lease')
local exists = current[1] ~= false
if condition == 'absent' and exists then return { 'exists', tonumber(current[1]) } end
if condition == 'revision' then
  if not exists then return { 'not_found', 0 } end
  if current[1] ~= expected then return { 'modified', tonumber(current[1]) } end
end
if lease ~= '' and not redis.call('ZSCORE', LEASES, lease) then return { 'no_lease', 0 } end
local rev, srev, fresh = revision_to_write()
local crev, screv = rev, srev
if exists then
  -- as written by this script, formatted with int()
  screv = current[2]
  crev = tonumber(screv)
end
log_put(srev, 0, '1', area, key, value, screv, lease)
commit_revision(srev, fresh)
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
