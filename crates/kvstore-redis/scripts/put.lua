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
local rev, fresh = revision_to_write()
local crev = rev
if exists then crev = tonumber(current[2]) end
log_put(rev, 0, 1, area, key, value, crev, lease)
commit_revision(rev, fresh)
if exists then detach(area, key, current[3]) end
redis.call('DEL', dk)
redis.call('HSET', dk, 'value', value, 'revision', int(rev), 'create_revision', int(crev))
if lease ~= '' then
  redis.call('HSET', dk, 'lease', lease)
  redis.call('SADD', lease_members(lease), area .. '\0' .. key)
end
if not exists then redis.call('ZADD', index_key(area), 0, key) end
return { 'ok', rev, crev }
