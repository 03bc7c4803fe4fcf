-- txn (docs/CONTRACT.md §10): ARGV[3] area; ARGV[4] the number of comparisons, then four
-- arguments each: key, target ('value' | 'revision' | 'create' | 'lease'), op ('eq' |
-- 'ne' | 'gt' | 'lt'), operand (revisions and lease ids as decimal strings, '' for no
-- lease); then each branch (success, then failure): its number of operations, then four
-- arguments each: kind ('put' | 'delete' | 'get'), key, value ('' unless put), lease id
-- ('' for none).
-- -> {1 | 0 (whether the comparisons held), revision, result...}, one result per operation
-- of the applied branch: {'put', create_revision} | {'delete', 1 | 0} | {'get'} (absent) |
-- {'get', value, revision, create_revision, lease}; or {'no_lease', id}, applying nothing.
-- All writes of the branch are one revision, logged (one entry per write) before any
-- data is written; core has checked that no key is written twice in a branch.
local area = ARGV[3]
local at = 4
local function arg()
  local value = ARGV[at]
  at = at + 1
  return value
end

-- Byte-wise comparison (Lua's own string < follows the locale's collation).
local function bytes_cmp(a, b)
  if a == b then return 0 end
  for j = 1, math.min(#a, #b) do
    local x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x < y and -1 or 1 end
  end
  return #a < #b and -1 or 1
end

-- Comparison of non-negative decimal strings without leading zeros ('' is 0): revisions
-- and lease ids, which a Lua number cannot always hold exactly.
local function decimal_cmp(a, b)
  if a == '' then a = '0' end
  if b == '' then b = '0' end
  if #a ~= #b then return #a < #b and -1 or 1 end
  return bytes_cmp(a, b)
end

local function holds(op, order)
  if op == 'eq' then return order == 0 end
  if op == 'ne' then return order ~= 0 end
  if op == 'gt' then return order > 0 end
  return order < 0
end

-- The stored state of a key: {value, revision, create_revision, lease} strings, or false.
local stored = {}
local function stored_state(key)
  local known = stored[key]
  if known ~= nil then return known end
  local h = redis.call('HMGET', data_key(area, key), 'value', 'revision', 'create_revision', 'lease')
  if not h[2] then
    stored[key] = false
  else
    stored[key] = { value = h[1], revision = h[2], create = h[3], lease = h[4] or '' }
  end
  return stored[key]
end

local succeeded = true
for _ = 1, tonumber(arg()) do
  local key, target, op, operand = arg(), arg(), arg(), arg()
  if succeeded then
    local s = stored_state(key)
    local ok
    if target == 'value' then
      ok = s and holds(op, bytes_cmp(s.value, operand))
    elseif target == 'revision' then
      ok = holds(op, decimal_cmp(s and s.revision or '0', operand))
    elseif target == 'create' then
      ok = holds(op, decimal_cmp(s and s.create or '0', operand))
    else
      ok = holds(op, decimal_cmp(s and s.lease or '', operand))
    end
    if not ok then succeeded = false end
  end
end

local function branch()
  local ops = {}
  for _ = 1, tonumber(arg()) do
    table.insert(ops, { kind = arg(), key = arg(), value = arg(), lease = arg() })
  end
  return ops
end
local success = branch()
local failure = branch()
local ops = failure
if succeeded then ops = success end

-- Everything that can fail is checked before the first write.
local writes = 0
for _, op in ipairs(ops) do
  if op.kind == 'put' then
    if op.lease ~= '' and not redis.call('ZSCORE', LEASES, op.lease) then
      return { 'no_lease', op.lease }
    end
    writes = writes + 1
  elseif op.kind == 'delete' and stored_state(op.key) then
    writes = writes + 1
  end
end

local rev, srev, fresh
if writes > 0 then
  rev, srev, fresh = revision_to_write()
else
  load_reads()
  rev = current_revision()
end

-- The results, with the state each key has after the operations before it.
local now = {}
local function state_of(key)
  local known = now[key]
  if known ~= nil then return known end
  return stored_state(key)
end
local out = { succeeded and 1 or 0, rev }
local seq = 0
local count = int(writes)
for _, op in ipairs(ops) do
  local s = state_of(op.key)
  if op.kind == 'get' then
    if s then
      table.insert(out, { 'get', s.value, s.revision, s.create, s.lease })
    else
      table.insert(out, { 'get' })
    end
  elseif op.kind == 'put' then
    local screv = srev
    if s then screv = s.create end
    log_put(srev, seq, count, area, op.key, op.value, screv, op.lease)
    seq = seq + 1
    now[op.key] = { value = op.value, revision = srev, create = screv, lease = op.lease }
    table.insert(out, { 'put', screv })
  else
    if s then
      log_entry(srev, seq, count, 'op', 'delete', 'area', area, 'key', op.key)
      seq = seq + 1
      now[op.key] = false
      table.insert(out, { 'delete', 1 })
    else
      table.insert(out, { 'delete', 0 })
    end
  end
end
if writes == 0 then return out end

commit_revision(srev, fresh)
for _, op in ipairs(ops) do
  local s = stored_state(op.key)
  local dk = data_key(area, op.key)
  if op.kind == 'put' then
    local old = s and s.lease or ''
    if old ~= '' and old ~= op.lease then detach(area, op.key, old) end
    local screv = srev
    if s then screv = s.create end
    if op.lease ~= '' then
      redis.call('HSET', dk, 'value', op.value, 'revision', srev, 'create_revision', screv, 'lease', op.lease)
      redis.call('SADD', lease_members(op.lease), area .. '\0' .. op.key)
    else
      redis.call('HSET', dk, 'value', op.value, 'revision', srev, 'create_revision', screv)
      if old ~= '' then redis.call('HDEL', dk, 'lease') end
    end
    if not s then redis.call('ZADD', index_key(area), 0, op.key) end
  elseif op.kind == 'delete' and s then
    detach(area, op.key, s.lease)
    redis.call('DEL', dk)
    redis.call('ZREM', index_key(area), op.key)
  end
end
return out
