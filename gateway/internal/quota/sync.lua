-- Writes a key's static state after a management change, unless a newer
-- version is already there. Leaves the balance alone.
-- KEYS[1] state hash
-- ARGV: ver, h, ph, phx, act, del, exp, rate, grant
local cur = redis.call('HGET', KEYS[1], 'ver')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'ver', ARGV[1], 'h', ARGV[2], 'ph', ARGV[3], 'phx', ARGV[4],
  'act', ARGV[5], 'del', ARGV[6], 'exp', ARGV[7], 'rate', ARGV[8], 'grant', ARGV[9])
return 1
