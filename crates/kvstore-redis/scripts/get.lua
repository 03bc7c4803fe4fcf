-- get: ARGV[3] area, ARGV[4] key -> {key, value, revision, create_revision, lease} or {}
return read(ARGV[3], ARGV[4]) or {}
