--[[
  claim_timers: move due delayed tasks of one partition from the timer wheel
  into the partition's timers stream, atomically. Many engine processes may
  call it at once: each due timer is claimed by exactly one call, so it fires
  once; a timer that fell due while nobody claimed (every engine down, Redis
  unreachable) fires at the next claim: late, never lost, never twice.

  Keys:
    wheel    timer wheel (zset) {pN}:wheel, members '<kind>|<order id>', score = due (ms)
    stream   timers stream {pN}:timers
  Args:
    limit: count   at most this many timers per call
  Reply: Claimed
  Output:
    {fired, next_due}: how many fired now; the earliest remaining due time
    in ms ('' when the wheel is empty), so the caller can sleep until then.
  Events: TimerFired on stream, one per timer: order '' (not an order
    event: no per-order sequence), data {o = order id, k = kind, due, fired}.
  Time: Redis server time (TIME), never an engine's clock.
  Memory: finishes (work already accepted: runs past maxmemory, allow-oom).
  Bounded: O(limit * log(wheel size)).
]]
local now = now_ms()
local due = rcall('ZRANGEBYSCORE', wheel, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local fired = 0
for i = 1, #due, 2 do
  local member, at = due[i], tonumber(due[i + 1])
  rcall('ZREM', wheel, member)
  local sep = string.find(member, '|', 1, true)
  local kind, order_id = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  append_event(stream, 'TimerFired', '', '', '0', now,
    {o = order_id, k = kind, due = at, fired = now})
  fired = fired + 1
end
local next_due = rcall('ZRANGE', wheel, 0, 0, 'WITHSCORES')
return {tostring(fired), next_due[2] or ''}
