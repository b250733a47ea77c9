-- Writes a key's state loaded from Postgres. Static fields are written only
-- when this load is at least as new as what is there (a management change
-- may have raced ahead); the balance only when none is there yet.
-- KEYS[1] state hash
-- ARGV: ver, h, ph, phx, act, del, exp, rate, grant, per, bal
local cur = redis.call('HMGET', KEYS[1], 'ver', 'per')
if not cur[1] or tonumber(cur[1]) <= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'ver', ARGV[1], 'h', ARGV[2], 'ph', ARGV[3], 'phx', ARGV[4],
    'act', ARGV[5], 'del', ARGV[6], 'exp', ARGV[7], 'rate', ARGV[8], 'grant', ARGV[9])
end
if not cur[2] then
  redis.call('HSET', KEYS[1], 'per', ARGV[10], 'bal', ARGV[11])
end
return 1
