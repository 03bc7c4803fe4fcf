-- reap: the prelude has already expired due leases. ARGV[3], optional: a revision a
-- watcher has delivered up to.
-- -> {current revision, epoch, revision before the oldest log entry or '' when the log is
-- empty, tip of ARGV[3]'s entries or ''}, for watchers checking that the history they
-- resume from is still complete and still the one they saw (a server that rolled back
-- and wrote again has other tips).
load_reads()
local first = redis.call('XRANGE', LOG, '-', '+', 'COUNT', 1)[1]
local before_oldest = ''
if first then
  local revision = tonumber(string.match(first[1], '^(%d+)'))
  before_oldest = int(revision - 1)
  local fields = first[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'prev' then before_oldest = fields[i + 1] end
  end
end
local tip = ''
if ARGV[3] and ARGV[3] ~= '' then tip = tip_of(tonumber(ARGV[3])) end
return { current_revision(), epoch(), before_oldest, tip }
