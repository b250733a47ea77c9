-- Reads what a correction of the balance must find unchanged: the period and
-- balance, and the newest call admitted (every acquire that holds credits
-- adds one; every settlement changes the balance).
-- KEYS[1] state hash, KEYS[2] rate log
-- Reply: {period, balance, newest member, members}
local s = redis.call('HMGET', KEYS[1], 'per', 'bal')
local last = redis.call('ZRANGE', KEYS[2], -1, -1)
return {s[1] or '', s[2] or '', last[1] or '', redis.call('ZCARD', KEYS[2])}
