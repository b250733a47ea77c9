-- forget.lua: the refusal of period ARGV[1] was not recorded, so the next
-- one of that period must be told again: clear the mark acquire.lua left,
-- unless a later period's refusal has replaced it since.
-- KEYS[1] gw:{id}:s   ARGV[1] period (YYYY-MM)
-- Reply: 1 when the mark was cleared, 0 otherwise.
if redis.call('HGET', KEYS[1], 'xper') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'xper')
end
return 0
