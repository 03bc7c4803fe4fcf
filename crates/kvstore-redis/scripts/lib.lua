-- Shared prelude of every kvstore script (each script is this file followed by its own).
--
-- KEYS[1] is the store's revision counter "{ns}:rev". Every other key of the store has
-- the same "{ns}:" prefix, so on Redis Cluster they all live in the hash slot of "{ns}".
-- ARGV[1] is a fresh random id of this call (epoch candidate, and the "tip" stamped on
-- the change log entries it writes), ARGV[2] the bounds of the change log and how long a
-- write's answer is remembered, "entries:bytes:once_ms".
--
-- Numbers: revisions start at the server's clock in microseconds (about 1.8e15), above
-- Lua's 14-digit default formatting, so every such number passed to redis.call or joined
-- into a string goes through int() (small counts and sequence numbers need not). Lease
-- ids are random 63-bit numbers, which a Lua number (a double) cannot hold exactly: they
-- stay strings throughout.
--
-- A script validates everything that can fail before its first write, so an error never
-- leaves it half-applied.
--
-- Cost: every redis.call costs far more than the Lua around it (about 0.3 µs for a
-- scalar reply, 0.6-0.8 µs for an array reply or a write, on top of the command), and
-- string.format / tonumber about 0.15 µs each; the hot path (a put) makes as few of
-- both as it can: no TIME unless a lease exists (or fresh data needs a seed), one
-- formatted revision, the log entry's arguments passed straight through. Scripts that
-- need none of this prelude (lease_grant, lease_alive) are standalone.
--
-- Layout (see the crate docs):
--   {ns}:rev                 global revision counter (INCR)
--   {ns}:epoch               random id of this store's data; changes if the data is lost
--   {ns}:<area>:k:<key>      hash: value, revision, create_revision, lease
--   {ns}:<area>:idx          sorted set of keys (score 0) for ordered prefix listing
--   {ns}:log                 stream of changes; entry id "<revision>-<n>"
--   {ns}:leases              sorted set: lease id -> deadline (ms, Redis server clock)
--   {ns}:lease-ttl           hash: lease id -> TTL (ms)
--   {ns}:lease-next          exists while no lease is due (see the end of this file)
--   {ns}:lease:<id>          set of "<area>\0<key>" attached to the lease
--   {ns}:once:<call id>      a write's answer, for a resend of the same call (Cluster)

local P = string.sub(KEYS[1], 1, -4)
local REV = KEYS[1]
local EPOCH = P .. 'epoch'
local LOG = P .. 'log'
local LEASES = P .. 'leases'
local LEASE_TTL = P .. 'lease-ttl'
local EPOCH_CANDIDATE = ARGV[1]
-- The change log's bounds, 'entries:bytes' (bytes 0: no bound in bytes).
local MAXLEN, MAXBYTES, ONCE_MS = string.match(ARGV[2], '^(%d+):(%d+):?(%d*)$')
MAXBYTES = tonumber(MAXBYTES)

-- Exactly once (Redis Cluster, whose client sends a script again after its connection
-- is reset): a write script remembers its answer under this call's id (ARGV[1], the same
-- in every send of one call) for ONCE_MS ms, and a send that finds it answers it again
-- instead of writing twice. ONCE_MS 0 or absent: nothing is remembered. cmsgpack keeps
-- 16-digit revisions exact (cjson would round them to 14 digits).
ONCE_MS = tonumber(ONCE_MS) or 0
local function remembered()
  if ONCE_MS == 0 then return nil end
  local answer = redis.call('GET', P .. 'once:' .. EPOCH_CANDIDATE)
  if answer then return cmsgpack.unpack(answer) end
  return nil
end
local function remember(answer)
  if ONCE_MS > 0 then
    redis.call('SET', P .. 'once:' .. EPOCH_CANDIDATE, cmsgpack.pack(answer), 'PX', ONCE_MS)
  end
  return answer
end

local function int(n) return string.format('%d', n) end

-- The revision before the one being written, as logged in 'prev': '0' when it is the
-- first of fresh data (set by revision_to_write).
local PREV = '0'

-- The server's clock, read at most once per call and only when needed (lease deadlines
-- and expiry, the first revision of fresh data): NOW in ms, NOW_US in µs, both set by
-- clock(), which returns NOW.
local NOW, NOW_US
local function clock()
  if not NOW then
    local t = redis.call('TIME')
    local s, us = tonumber(t[1]), tonumber(t[2])
    NOW = s * 1000 + math.floor(us / 1000)
    NOW_US = s * 1000000 + us
  end
  return NOW
end

-- Raise an error reply; the Rust side maps the "KVSTORE_" codes to typed errors.
local function fail(code, message) error({ err = code .. ' ' .. message }) end

local function data_key(area, key) return P .. area .. ':k:' .. key end
local function index_key(area) return P .. area .. ':idx' end
local function lease_members(id) return P .. 'lease:' .. id end

-- The revision the next write gets. A missing counter is fresh data, or data that was
-- lost (a restart without persistence): it starts at the clock in microseconds, above
-- every revision lost data can have handed out (that would take more than one write per
-- microsecond), so revisions and fencing tokens never go backwards. A counter missing
-- while the change log exists (evicted or deleted), or holding a foreign value, is an
-- error before anything is written.
-- Returns the revision, the same formatted with int(), and whether the data is fresh.
local function revision_to_write()
  local current = redis.call('GET', REV)
  if not current then
    if redis.call('EXISTS', LOG) == 1 then
      fail('KVSTORE_CORRUPT', 'the revision counter ' .. REV .. ' is missing while the store has data: evicted or deleted')
    end
    clock()
    PREV = '0'
    return NOW_US, int(NOW_US), true
  end
  local rev = tonumber(current)
  if not rev or rev ~= math.floor(rev) or rev < 0 then
    fail('KVSTORE_CORRUPT', 'the revision counter ' .. REV .. ' holds a foreign value')
  end
  PREV = int(rev)
  return rev + 1, int(rev + 1), false
end

-- Append entry `seq` (a small integer; of `count`, a string) of revision `srev` (the
-- revision from revision_to_write, formatted) to the change log, with the fields `...`.
-- Its 'prev' is the revision before it (0 for the first of fresh data, whose revision is
-- the clock): a watcher at `prev` reads on from this entry, and one further back knows
-- it missed entries. The first entry of a revision is written before anything else: if
-- the log already holds this revision (the counter was reset behind it), it fails and
-- nothing has been written.
local function log_entry(srev, seq, count, ...)
  local id = srev .. '-' .. seq
  if seq > 0 then
    return redis.call('XADD', LOG, 'MAXLEN', '~', MAXLEN, id, 'entries', count,
      'prev', PREV, 'tip', EPOCH_CANDIDATE, ...)
  end
  local added = redis.pcall('XADD', LOG, 'MAXLEN', '~', MAXLEN, id, 'entries', count,
    'prev', PREV, 'tip', EPOCH_CANDIDATE, ...)
  if type(added) == 'table' and added.err then
    fail('KVSTORE_CORRUPT', 'the revision counter ' .. REV .. ' is behind the change log (' .. added.err .. ')')
  end
end

-- `screv` is the create revision as a string.
local function log_put(srev, seq, count, area, key, value, screv, lease)
  log_entry(srev, seq, count, 'op', 'put', 'area', area, 'key', key,
    'value', value, 'create_revision', screv, 'lease', lease)
end

-- Keep the change log within MAXBYTES of server memory, approximately, as `MAXLEN ~`
-- keeps it within MAXLEN entries: every 32nd revision, estimate its size and, when it is
-- over, trim the oldest entries in proportion. A watcher behind what was trimmed gets a
-- Resync, as after any trim. Best effort, and it can never fail: it runs after the
-- first write of the call (Redis does not roll a script back), so a server without
-- `MEMORY` (renamed, denied by an ACL) keeps only the bound in entries.
local function bound_log_bytes(srev)
  if MAXBYTES == 0 or tonumber(srev) % 32 ~= 0 then return end
  local used = redis.pcall('MEMORY', 'USAGE', LOG, 'SAMPLES', 5)
  if type(used) ~= 'number' or used <= MAXBYTES then return end
  local entries = redis.pcall('XLEN', LOG)
  if type(entries) ~= 'number' then return end
  redis.pcall('XTRIM', LOG, 'MAXLEN', '~', math.floor(entries * MAXBYTES / used))
end

-- Make `srev` (logged already) the store's revision.
local function commit_revision(srev, fresh)
  redis.call('SET', REV, srev)
  if fresh then redis.call('SET', EPOCH, EPOCH_CANDIDATE, 'NX') end
  bound_log_bytes(srev)
end

local function detach(area, key, lease)
  if lease and lease ~= '' then
    redis.call('SREM', lease_members(lease), area .. '\0' .. key)
  end
end

-- Helpers for deleting and for reading, which most calls never run, are made on first
-- use by load_deletes() / load_reads(): creating a closure costs every call of every
-- script whose prelude defines it (about 50 ns each, more with upvalues), and a put
-- neither deletes nor reads ranges.

local delete_all, revoke
local function load_deletes()
  if revoke then return end
  local function log_delete(srev, seq, count, area, key)
    log_entry(srev, seq, count, 'op', 'delete', 'area', area, 'key', key)
  end

  -- Delete the given {area, key} pairs that exist, all at one new revision.
  -- Returns that revision, or 0 when none existed.
  delete_all = function(pairs_to_delete)
    local present = {}
    for _, ak in ipairs(pairs_to_delete) do
      if redis.call('EXISTS', data_key(ak[1], ak[2])) == 1 then
        table.insert(present, ak)
      end
    end
    if #present == 0 then return 0 end
    local rev, srev, fresh = revision_to_write()
    local count = int(#present)
    for i, ak in ipairs(present) do
      log_delete(srev, i - 1, count, ak[1], ak[2])
    end
    commit_revision(srev, fresh)
    for _, ak in ipairs(present) do
      local dk = data_key(ak[1], ak[2])
      detach(ak[1], ak[2], redis.call('HGET', dk, 'lease'))
      redis.call('DEL', dk)
      redis.call('ZREM', index_key(ak[1]), ak[2])
    end
    return rev
  end

  -- End a lease: its keys are deleted at one revision. Returns that revision or 0.
  revoke = function(id)
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
end

local epoch, current_revision, tip_of, keys_from, read
local function load_reads()
  if read then return end
  -- The data's epoch, set to this call's candidate if there is none yet.
  epoch = function()
    local current = redis.call('GET', EPOCH)
    if current then return current end
    redis.call('SET', EPOCH, EPOCH_CANDIDATE, 'NX')
    return redis.call('GET', EPOCH)
  end

  current_revision = function()
    return tonumber(redis.call('GET', REV) or '0')
  end

  -- The tip stamped on the change log entries of revision `rev`, or '' when none is logged.
  tip_of = function(rev)
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

  -- The keys of `area` starting with `start` ('' for all), in key order; only those
  -- after the key `after` when it is given (and not ''), and at most `limit` of them
  -- when it is given (and above 0).
  keys_from = function(area, start, after, limit)
    local min, max = '-', '+'
    if start ~= '' then min, max = '[' .. start, '(' .. start .. '\255' end
    if after and after ~= '' then min = '(' .. after end
    if limit and limit > 0 then
      return redis.call('ZRANGEBYLEX', index_key(area), min, max, 'LIMIT', 0, limit)
    end
    return redis.call('ZRANGEBYLEX', index_key(area), min, max)
  end

  -- {key, value, revision, create_revision, lease} of a key, or nil.
  read = function(area, key)
    local h = redis.call('HMGET', data_key(area, key), 'value', 'revision', 'create_revision', 'lease')
    if not h[2] then return nil end
    return { key, h[1], tonumber(h[2]), tonumber(h[3]), h[4] or '' }
  end
end

-- Expire every lease whose deadline has passed, earliest first, each at its own
-- revision; so no script ever reads a key whose lease has expired.
--
-- The common case, nothing due, is one EXISTS of LEASE_NEXT, a key that expires (on the
-- server's clock, which Redis holds still for the length of a script) a millisecond
-- before the earliest lease deadline, or after NEXT_CHECK_MS when that is sooner. While
-- it exists no lease is due: a grant (or the new lease of a TTL put) lowers its expiry
-- to the new lease's deadline, and nothing else makes a deadline earlier (a keep-alive
-- moves one later, a revoke removes one). Once it is gone a script looks for due leases with the clock (TIME, then the
-- sorted set), expires them, and sets it again. The bound NEXT_CHECK_MS limits what a
-- writer that does not keep it (an older version of this code granting a lease) can
-- delay: expiry by these scripts, never `get`, which checks a key's lease itself.
local LEASE_NEXT = P .. 'lease-next'
local NEXT_CHECK_MS = 250
if redis.call('EXISTS', LEASE_NEXT) == 0 then
  local now = clock()
  local earliest = redis.call('ZRANGE', LEASES, 0, 0, 'WITHSCORES')
  if earliest[2] and tonumber(earliest[2]) <= now then
    load_deletes()
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', int(now))) do
      revoke(id)
    end
    earliest = redis.call('ZRANGE', LEASES, 0, 0, 'WITHSCORES')
  end
  local next_check = now + NEXT_CHECK_MS
  if earliest[2] then next_check = math.min(next_check, tonumber(earliest[2]) - 1) end
  -- At or before now this deletes it at once: the next script looks again.
  redis.call('SET', LEASE_NEXT, '1', 'PXAT', int(next_check))
end
