-- reap: the prelude has already expired due leases.
-- -> {current revision, epoch, oldest log id or ''}, for watchers checking that the
-- history they resume from is still complete.
local first = redis.call('XRANGE', LOG, '-', '+', 'COUNT', 1)
return { current_revision(), epoch(), first[1] and first[1][1] or '' }
