-- Shared prelude of every kvstore script (each script is this file followed by its own).
--
-- KEYS[1] is the store's revision counter "{ns}:rev". Every other key of the store has
-- the same "{ns}:" prefix, so on Redis Cluster they all live in the hash slot of "{ns}".
-- ARGV[1] is a fresh random id of this call (epoch candidate, and the "tip" stamped on
-- the change log entries it writes), ARGV[2] the approximate stream length.
--
-- Numbers: revisions start at the server's clock in microseconds (about 1.8e15), above
-- Lua's 14-digit default formatting, so every number passed to redis.call or joined into
-- a string goes through int(). Lease ids are random 63-bit numbers, which a Lua number
-- (a double) cannot hold exactly: they stay strings throughout.
--
-- A script validates everything that can fail before its first write, so an error never
-- leaves it half-applied.
--
-- Layout (see the crate docs):
--   {ns}:rev                 global revision counter (INCR)
--   {ns}:epoch               random id of this store's data; changes if the data is lost
--   {ns}:<area>:k:<key>      hash: value, revision, create_revision, lease
--   {ns}:<area>:idx          sorted set of keys (score 0) for ordered prefix listing
--   {ns}:log                 stream of changes; entry id "<revision>-<n>"
--   {ns}:leases              sorted set: lease id -> deadline (ms, Redis server clock)
--   {ns}:lease-ttl           hash: lease id -> TTL (ms)
--   {ns}:lease:<id>          set of "<area>\0<key>" attached to the lease

local P = string.sub(KEYS[1], 1, -4)
local REV = KEYS[1]
local EPOCH = P .. 'epoch'
local LOG = P .. 'log'
local LEASES = P .. 'leases'
local LEASE_TTL = P .. 'lease-ttl'
local EPOCH_CANDIDATE = ARGV[1]
local MAXLEN = ARGV[2]

local function int(n) return string.format('%d', n) end

-- Whether the revision being written is the first of fresh data (see revision_to_write).
local FRESH = false

local TIME = redis.call('TIME')
local NOW = tonumber(TIME[1]) * 1000 + math.floor(tonumber(TIME[2]) / 1000)
local NOW_US = tonumber(TIME[1]) * 1000000 + tonumber(TIME[2])

-- Raise an error reply; the Rust side maps the "KVSTORE_" codes to typed errors.
local function fail(code, message) error({ err = code .. ' ' .. message }) end

local function data_key(area, key) return P .. area .. ':k:' .. key end
local function index_key(area) return P .. area .. ':idx' end
local function lease_members(id) return P .. 'lease:' .. id end

local function epoch()
  redis.call('SET', EPOCH, EPOCH_CANDIDATE, 'NX')
  return redis.call('GET', EPOCH)
end

-- The revision the next write gets. A missing counter is fresh data, or data that was
-- lost (a restart without persistence): it starts at the clock in microseconds, above
-- every revision lost data can have handed out (that would take more than one write per
-- microsecond), so revisions and fencing tokens never go backwards. A counter missing
-- while the change log exists (evicted or deleted), or holding a foreign value, is an
-- error before anything is written.
local function revision_to_write()
  local current = redis.call('GET', REV)
  if not current then
    if redis.call('EXISTS', LOG) == 1 then
      fail('KVSTORE_CORRUPT', 'the revision counter ' .. REV .. ' is missing while the store has data: evicted or deleted')
    end
    FRESH = true
    return NOW_US, true
  end
  local rev = tonumber(current)
  if not rev or rev ~= math.floor(rev) or rev < 0 then
    fail('KVSTORE_CORRUPT', 'the revision counter ' .. REV .. ' holds a foreign value')
  end
  FRESH = false
  return rev + 1, false
end

-- Append entry `seq` (of `count`) of revision `rev` to the change log. `prev` is the
-- revision before it (0 for the first of fresh data, whose revision is the clock): a
-- watcher at `prev` reads on from this entry, and one further back knows it missed
-- entries. The first entry of a revision is written before anything else: if the log
-- already holds this revision (the counter was reset behind it), it fails and nothing
-- has been written.
local function log_entry(rev, seq, count, fields)
  local id = int(rev) .. '-' .. int(seq)
  local prev = 0
  if not FRESH then prev = rev - 1 end
  local args = { 'XADD', LOG, 'MAXLEN', '~', MAXLEN, id, 'entries', int(count),
    'prev', int(prev), 'tip', EPOCH_CANDIDATE }
  for _, f in ipairs(fields) do table.insert(args, f) end
  if seq > 0 then return redis.call(unpack(args)) end
  local added = redis.pcall(unpack(args))
  if type(added) == 'table' and added.err then
    fail('KVSTORE_CORRUPT', 'the revision counter ' .. REV .. ' is behind the change log (' .. added.err .. ')')
  end
end

local function log_put(rev, seq, count, area, key, value, crev, lease)
  log_entry(rev, seq, count, { 'op', 'put', 'area', area, 'key', key,
    'value', value, 'create_revision', int(crev), 'lease', lease })
end

local function log_delete(rev, seq, count, area, key)
  log_entry(rev, seq, count, { 'op', 'delete', 'area', area, 'key', key })
end

-- Make `rev` (logged already) the store's revision.
local function commit_revision(rev, fresh)
  redis.call('SET', REV, int(rev))
  if fresh then redis.call('SET', EPOCH, EPOCH_CANDIDATE, 'NX') end
end

local function current_revision()
  return tonumber(redis.call('GET', REV) or '0')
end

-- The tip stamped on the change log entries of revision `rev`, or '' when none is logged.
local function tip_of(rev)
  if rev <= 0 then return '' end
  local id = int(rev) .. '-0'
  local entry = redis.call('XRANGE', LOG, id, id)[1]
  if not entry then return '' end
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'tip' then return fields[i + 1] end
  end
  return ''
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
  local rev, fresh = revision_to_write()
  for i, ak in ipairs(present) do
    log_delete(rev, i - 1, #present, ak[1], ak[2])
  end
  commit_revision(rev, fresh)
  for _, ak in ipairs(present) do
    local dk = data_key(ak[1], ak[2])
    detach(ak[1], ak[2], redis.call('HGET', dk, 'lease'))
    redis.call('DEL', dk)
    redis.call('ZREM', index_key(ak[1]), ak[2])
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
for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', int(NOW))) do
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
