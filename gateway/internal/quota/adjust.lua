-- Gives back (delta > 0) or takes (delta < 0) credits after the backend
-- answered, if the balance is still of the same credit month, once per
-- operation: a retried adjustment whose first try did reach Redis changes
-- nothing the second time.
-- KEYS[1] state hash, KEYS[2] the operation's marker; ARGV[1] period, ARGV[2] delta
if redis.call('HGET', KEYS[1], 'per') ~= ARGV[1] then return false end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', 86400) then return false end
return redis.call('HINCRBY', KEYS[1], 'bal', ARGV[2])
