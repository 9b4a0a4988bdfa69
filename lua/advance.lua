--[[
  advance: delivery started (APPROVED -> DISPATCHED) or purchase confirmed
  (DISPATCHED -> CONFIRMED; an admin may also confirm an APPROVED order).

  @keys 4
  Input:
    KEYS[1] order hash
    KEYS[2] orders stream (or the batch stream)
    KEYS[3] in-flight index
    KEYS[4] timer wheel
    ARGV[1] target: DISPATCHED | CONFIRMED
    ARGV[2] expected order version ('' = any)
    ARGV[3] actor: restaurant | customer | admin | timer
    ARGV[4] confirmation notice delay (ms after dispatch)
  Output:
    {'ok'|'noop'|'err', status, pay, version, decision, reason, detail}
    'noop': already there. 'err' detail: not_found, stale, illegal (not
    reachable from the current status).
  Events: OrderDispatched or OrderConfirmed on KEYS[2].
  Timers: DISPATCHED sets confirm_notice; CONFIRMED (by anyone) cancels
    confirm_notice and auto_confirm in this same step.
  Bounded: O(1).
]]
local order_key, order_stream, inflight, timers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local target, expected, actor, notice_after = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local o = load_order(order_key)
if not o then return {'err', '', '', '0', '', '', 'not_found'} end
if o.status == target then return reply('noop', o) end
if stale(o, expected) then return reply('err', o, 'stale') end
local from_ok
if target == 'DISPATCHED' then
  from_ok = o.status == 'APPROVED'
elseif target == 'CONFIRMED' then
  from_ok = o.status == 'DISPATCHED' or (actor == 'admin' and o.status == 'APPROVED')
end
if not from_ok then return reply('err', o, 'illegal') end
local now = now_ms()
o.status = target
save(order_key, inflight, o, {'status'}, now)
if target == 'DISPATCHED' then
  timer_set(timers, 'confirm_notice', o.id, now + notice_after)
else
  timer_clear(timers, 'confirm_notice', o.id)
  timer_clear(timers, 'auto_confirm', o.id)
end
emit(order_stream, order_key, o, target == 'DISPATCHED' and 'OrderDispatched' or 'OrderConfirmed',
  {by = actor}, now)
return reply('ok', o)
