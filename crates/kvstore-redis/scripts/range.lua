-- range: ARGV[3] area, ARGV[4] mode ('key' or 'prefix'), ARGV[5] key or key start.
-- -> {revision, epoch, tip, pair, pair, ...}, read atomically, so a watch can start right
-- after `revision` with nothing in between. `tip` is the tip stamped on the change log
-- entries of `revision` ('' when none is logged), for telling a rollback apart later.
local area, mode, target = ARGV[3], ARGV[4], ARGV[5]
load_reads()
local revision = current_revision()
local out = { revision, epoch(), tip_of(revision) }
local keys
if mode == 'key' then keys = { target } else keys = keys_from(area, target) end
for _, key in ipairs(keys) do
  local pair = read(area, key)
  if pair then table.insert(out, pair) end
end
return out
