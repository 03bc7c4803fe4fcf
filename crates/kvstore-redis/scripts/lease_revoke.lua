-- lease_revoke: ARGV[3] lease id -> revision of the deletes, or 0
load_deletes()
return revoke(ARGV[3])
