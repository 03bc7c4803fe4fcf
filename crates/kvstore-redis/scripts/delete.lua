-- delete: ARGV[3] area, ARGV[4] key, ARGV[5] condition ('always' or 'revision'),
-- ARGV[6] expected revision.
-- -> {'ok', revision or 0} | {'not_found'|'modified', actual revision}
local area, key, condition, expected = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local current = redis.call('HGET', data_key(area, key), 'revision')
if condition == 'revision' then
  if not current then return { 'not_found', 0 } end
  if current ~= expected then return { 'modified', tonumber(current) } end
end
load_deletes()
return { 'ok', delete_all({ { area, key } }) }
