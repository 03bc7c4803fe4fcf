-- range: ARGV[3] area, ARGV[4] mode ('key' or 'prefix'), ARGV[5] key or key start; for
-- 'prefix' a page of the range: ARGV[6] the key the previous page ended with ('' or
-- absent to start at the beginning), ARGV[7] most keys to read, ARGV[8] most bytes of
-- keys and values to read ('0' or absent: no bound; a page reads at least one key).
-- -> {revision, epoch, tip, next, pair, pair, ...}, read atomically, so a watch can start
-- right after `revision` with nothing in between. `tip` is the tip stamped on the change
-- log entries of `revision` ('' when none is logged), for telling a rollback apart
-- later. `next` is the last key this page read when the range may go on after it, ''
-- when the page reached the end of the range.
local area, mode, target = ARGV[3], ARGV[4], ARGV[5]
load_reads()
local revision = current_revision()
local out = { revision, epoch(), tip_of(revision), '' }
if mode == 'key' then
  local pair = read(area, target)
  if pair then table.insert(out, pair) end
  return out
end
local most_keys, most_bytes = tonumber(ARGV[7] or '0'), tonumber(ARGV[8] or '0')
local keys = keys_from(area, target, ARGV[6], most_keys)
local bytes = 0
for i, key in ipairs(keys) do
  local pair = read(area, key)
  if pair then
    table.insert(out, pair)
    bytes = bytes + #key + #(pair[2] or '')
  end
  if i == #keys then
    -- As many keys as asked for: the range may go on.
    if most_keys > 0 and i == most_keys then out[4] = key end
  elseif most_bytes > 0 and bytes >= most_bytes then
    out[4] = key
    break
  end
end
return out
