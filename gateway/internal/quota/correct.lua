-- Sets the balance to what the ledger, the stream and the holds say, only if
-- nothing happened to the key since the snapshot the correction was computed
-- from: same period, same balance, same newest admitted call and as many.
-- A call admitted or settled meanwhile makes it a no-op (retried later).
-- KEYS[1] state hash, KEYS[2] rate log
-- ARGV[1] period, ARGV[2] balance seen, ARGV[3] newest member seen,
-- ARGV[4] members seen, ARGV[5] the corrected balance
-- Reply: 1 corrected, 0 changed meanwhile
local s = redis.call('HMGET', KEYS[1], 'per', 'bal')
local last = redis.call('ZRANGE', KEYS[2], -1, -1)
if (s[1] or '') ~= ARGV[1] or (s[2] or '') ~= ARGV[2] or (last[1] or '') ~= ARGV[3]
  or redis.call('ZCARD', KEYS[2]) ~= tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', KEYS[1], 'bal', ARGV[5])
return 1
