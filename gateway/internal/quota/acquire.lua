-- One round trip per public request: check the key's state, then decide the
-- sliding-log rate limit and the credit hold together. A refused request
-- consumes neither rate nor credits. Redis TIME is the only clock.
--
-- KEYS[1] key state hash, KEYS[2] rate log (sorted set, score = µs)
-- ARGV[1] key hash (hex)  ARGV[2] cost to hold  ARGV[3] "1" if the tier allows the route
-- ARGV[4] unique member (event ULID)  ARGV[5] window in µs
--
-- Reply: {code, limit, remaining, reset_ms, credits, now_ms, period, retry_ms, first}
-- codes: 0 ok, 1 no state (load it), 2 unknown hash, 3 deleted, 4 expired,
--        5 inactive, 6 rate limited, 7 insufficient credits, 8 tier forbids route
-- first is 1 on the key's first refusal for want of credits in the period
-- (code 7): the field 'xper' of the state hash remembers the period of the
-- last such refusal, so only the first one of a period is told (a flush
-- forgets it, and the next refusal is told again).
local function period(sec)
  local z = math.floor(sec / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp + 3
  if mp >= 10 then m = mp - 9 end
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d', y, m)
end

local t = redis.call('TIME')
local sec = tonumber(t[1])
local now_us = sec * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local s = redis.call('HMGET', KEYS[1], 'h', 'ph', 'phx', 'act', 'del', 'exp', 'rate', 'grant', 'per', 'bal', 'xper')
if s[5] == '1' then return {3, 0, 0, 0, 0, now_ms, '', 0, 0} end
if not s[1] or not s[9] then return {1, 0, 0, 0, 0, now_ms, '', 0, 0} end
local hash = ARGV[1]
if s[1] ~= hash then
  if not (s[2] and s[2] == hash and tonumber(s[3] or '0') > now_ms) then
    return {2, 0, 0, 0, 0, now_ms, '', 0, 0}
  end
end
local exp = tonumber(s[6] or '0')
if exp > 0 and exp <= now_ms then return {4, 0, 0, 0, 0, now_ms, '', 0, 0} end

local per = period(sec)
local bal = tonumber(s[10])
if s[9] ~= per then
  -- A new credit month: the full grant, whatever the last month left.
  bal = tonumber(s[8])
  redis.call('HSET', KEYS[1], 'per', per, 'bal', bal)
end

local limit = tonumber(s[7])
local window = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_us - window)
local count = redis.call('ZCARD', KEYS[2])
local reset_ms = now_ms + math.floor(window / 1000)
if count > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  reset_ms = math.floor((tonumber(oldest[2]) + window) / 1000) + 1
end
if s[4] ~= '1' then return {5, limit, math.max(limit - count, 0), reset_ms, bal, now_ms, per, 0, 0} end
if ARGV[3] ~= '1' then return {8, limit, math.max(limit - count, 0), reset_ms, bal, now_ms, per, 0, 0} end
if count >= limit then
  return {6, limit, 0, reset_ms, bal, now_ms, per, reset_ms - now_ms, 0}
end
local cost = tonumber(ARGV[2])
if cost > bal then
  local first = 0
  if s[11] ~= per then
    redis.call('HSET', KEYS[1], 'xper', per)
    first = 1
  end
  return {7, limit, limit - count, reset_ms, bal, now_ms, per, 0, first}
end
redis.call('ZADD', KEYS[2], now_us, ARGV[4])
redis.call('PEXPIRE', KEYS[2], math.floor(window / 1000) + 1000)
if count == 0 then reset_ms = now_ms + math.floor(window / 1000) + 1 end
if cost > 0 then bal = redis.call('HINCRBY', KEYS[1], 'bal', -cost) end
return {0, limit, limit - count - 1, reset_ms, bal, now_ms, per, 0, 0}
