-- secretproxy: one request through a route's shared rate limit (GCRA) and daily quota, atomically.
--
-- KEYS[1]  the bucket: its theoretical arrival time (TAT), microseconds since the Unix epoch
-- KEYS[2]  the daily quota counter of the current UTC day (ignored when ARGV[3] is 0)
-- ARGV[1]  emission interval in microseconds (the limit's period / requests)
-- ARGV[2]  burst (how many requests may pass at once)
-- ARGV[3]  daily quota (0: none)
-- ARGV[4]  Unix second at which the counter's UTC day ends (the key lives an hour longer, so a
--          replica whose clock is a little behind still finds it)
--
-- Returns {allowed (1/0), retry_after_microseconds, daily (1 when the quota refused)}.
-- The clock is the server's (TIME), so replicas with skewed clocks share one timeline. Same
-- semantics as the in-process limiter (governor): `burst` requests pass at once, then one per
-- emission interval; a refused request takes nothing from the bucket or the quota.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local daily = tonumber(ARGV[3])

local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local new_tat = tat + emission
local allow_at = new_tat - emission * burst
if allow_at > now then
  return {0, allow_at - now, 0}
end

if daily > 0 then
  local used = tonumber(redis.call('GET', KEYS[2])) or 0
  if used >= daily then
    return {0, (tonumber(ARGV[4]) - tonumber(time[1])) * 1000000, 1}
  end
  redis.call('INCR', KEYS[2])
  if used == 0 then
    redis.call('EXPIREAT', KEYS[2], tonumber(ARGV[4]) + 3600)
  end
end

-- The bucket is full again once now reaches the TAT: keep the key that long (and a second).
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {1, 0, 0}
