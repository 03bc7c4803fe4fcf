-- delete_prefix: ARGV[3] area, ARGV[4] key start ('' for the whole area).
-- -> revision of the delete, or 0 when nothing was below the prefix
local area = ARGV[3]
load_reads()
load_deletes()
local doomed = {}
for _, key in ipairs(keys_from(area, ARGV[4])) do
  table.insert(doomed, { area, key })
end
return delete_all(doomed)
