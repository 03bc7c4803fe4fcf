-- Shared prelude of every kvstore script (each script is this file followed by its own).
--
-- KEYS[1] is the store's revision counter "{ns}:rev". Every other key of the store has
-- the same "{ns}:" prefix, so on Redis Cluster they all live in the hash slot of "{ns}".
-- ARGV[1] is a fresh random epoch candidate, ARGV[2] the approximate stream length.
--
-- Layout (see the crate docs):
--   {ns}:rev                 global revision counter (INCR)
--   {ns}:epoch               random id of this store's data; changes if the data is lost
--   {ns}:<area>:k:<key>      hash: value, revision, create_revision, lease
--   {ns}:<area>:idx          sorted set of keys (score 0) for ordered prefix listing
--   {ns}:log                 stream of changes; entry id "<revision>-<n>"
--   {ns}:leases              sorted set: lease id -> deadline (ms, Redis server clock)
--   {ns}:lease-ttl           hash: lease id -> TTL (ms)
--   {ns}:lease-id            lease id counter
--   {ns}:lease:<id>          set of "<area>\0<key>" attached to the lease

local P = string.sub(KEYS[1], 1, -4)
local REV = KEYS[1]
local EPOCH = P .. 'epoch'
local LOG = P .. 'log'
local LEASES = P .. 'leases'
local LEASE_TTL = P .. 'lease-ttl'
local LEASE_IDS = P .. 'lease-id'
local EPOCH_CANDIDATE = ARGV[1]
local MAXLEN = ARGV[2]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function data_key(area, key) return P .. area .. ':k:' .. key end
local function index_key(area) return P .. area .. ':idx' end
local function lease_members(id) return P .. 'lease:' .. id end

local function epoch()
  redis.call('SET', EPOCH, EPOCH_CANDIDATE, 'NX')
  return redis.call('GET', EPOCH)
end

-- Data that is lost (a restart without persistence) starts again at revision 1, so
-- only the first revision needs to make sure the data has an epoch.
local function next_revision()
  local rev = redis.call('INCR', REV)
  if rev == 1 then redis.call('SET', EPOCH, EPOCH_CANDIDATE, 'NX') end
  return rev
end

local function current_revision()
  return tonumber(redis.call('GET', REV) or '0')
end

-- Append entry `seq` (of `count`) of revision `rev` to the change log.
local function log_put(rev, seq, count, area, key, value, crev, lease)
  redis.call('XADD', LOG, 'MAXLEN', '~', MAXLEN, rev .. '-' .. seq,
    'entries', count, 'op', 'put', 'area', area, 'key', key,
    'value', value, 'create_revision', crev, 'lease', lease)
end

local function log_delete(rev, seq, count, area, key)
  redis.call('XADD', LOG, 'MAXLEN', '~', MAXLEN, rev .. '-' .. seq,
    'entries', count, 'op', 'delete', 'area', area, 'key', key)
end

local function detach(area, key, lease)
  if lease and lease ~= '' then
    redis.call('SREM', lease_members(lease), area .. '\0' .. key)
  end
end

-- Delete the given {area, key} pairs that exist, all at one new revision.
-- Returns that revision, or 0 when none existed.
local function delete_all(pairs_to_delete)
  local present = {}
  for _, ak in ipairs(pairs_to_delete) do
    if redis.call('EXISTS', data_key(ak[1], ak[2])) == 1 then
      table.insert(present, ak)
    end
  end
  if #present == 0 then return 0 end
  local rev = next_revision()
  for i, ak in ipairs(present) do
    local dk = data_key(ak[1], ak[2])
    detach(ak[1], ak[2], redis.call('HGET', dk, 'lease'))
    redis.call('DEL', dk)
    redis.call('ZREM', index_key(ak[1]), ak[2])
    log_delete(rev, i - 1, #present, ak[1], ak[2])
  end
  return rev
end

-- End a lease: its keys are deleted at one revision. Returns that revision or 0.
local function revoke(id)
  local members = redis.call('SMEMBERS', lease_members(id))
  redis.call('DEL', lease_members(id))
  redis.call('ZREM', LEASES, id)
  redis.call('HDEL', LEASE_TTL, id)
  local attached = {}
  for _, m in ipairs(members) do
    local sep = string.find(m, '\0', 1, true)
    table.insert(attached, { string.sub(m, 1, sep - 1), string.sub(m, sep + 1) })
  end
  return delete_all(attached)
end

-- Expire every lease whose deadline has passed, earliest first, each at its own
-- revision; so no script ever reads a key whose lease has expired.
local NOW = now_ms()
for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', NOW)) do
  revoke(id)
end

-- The keys of `area` starting with `start` ('' for all), in key order.
local function keys_from(area, start)
  if start == '' then
    return redis.call('ZRANGEBYLEX', index_key(area), '-', '+')
  end
  return redis.call('ZRANGEBYLEX', index_key(area), '[' .. start, '(' .. start .. '\255')
end

-- {key, value, revision, create_revision, lease} of a key, or nil.
local function read(area, key)
  local h = redis.call('HMGET', data_key(area, key), 'value', 'revision', 'create_revision', 'lease')
  if not h[2] then return nil end
  return { key, h[1], tonumber(h[2]), tonumber(h[3]), h[4] or '' }
end
