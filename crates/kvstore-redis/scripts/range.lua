-- range: ARGV[3] area, ARGV[4] mode ('key' or 'prefix'), ARGV[5] key or key start.
-- -> {revision, epoch, pair, pair, ...}, read atomically, so a watch can start right
-- after `revision` with nothing in between.
local area, mode, target = ARGV[3], ARGV[4], ARGV[5]
local out = { current_revision(), epoch() }
local keys
if mode == 'key' then keys = { target } else keys = keys_from(area, target) end
for _, key in ipairs(keys) do
  local pair = read(area, key)
  if pair then table.insert(out, pair) end
end
return out
