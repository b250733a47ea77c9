-- Gives back (delta > 0) or takes (delta < 0) credits after the backend
-- answered, if the balance is still of the same credit month.
-- KEYS[1] state hash; ARGV[1] period, ARGV[2] delta
if redis.call('HGET', KEYS[1], 'per') ~= ARGV[1] then return false end
return redis.call('HINCRBY', KEYS[1], 'bal', ARGV[2])
