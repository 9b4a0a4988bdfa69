--[[
  advance: delivery started (APPROVED -> DISPATCHED) or purchase confirmed
  (DISPATCHED -> CONFIRMED; an admin may also confirm an APPROVED order).

  Keys:
    order_key     order hash
    order_stream  orders stream (or the batch stream)
    inflight      in-flight index
    timers        timer wheel
  Args:
    target: OrderStatus   DISPATCHED | CONFIRMED
    expected: version?    expected order version (none = any)
    actor: Actor          restaurant | customer | admin | timer
    notice_after: ms      confirmation notice delay after dispatch
  Reply: Transition
  Output:
    {'ok'|'noop'|'err', status, pay, version, decision, reason, detail}
    'noop': already there. 'err' detail: not_found, stale, illegal (not
    reachable from the current status).
  Events: OrderDispatched or OrderConfirmed on order_stream.
  Timers: DISPATCHED sets confirm_notice; CONFIRMED (by anyone) cancels
    confirm_notice and auto_confirm in this same step.
  Memory: finishes (work already accepted: runs past maxmemory, allow-oom).
  Bounded: O(1).
]]
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
save(inflight, o, {'status'}, now)
if target == 'DISPATCHED' then
  timer_set(timers, 'confirm_notice', o.id, now + notice_after)
else
  timer_clear(timers, 'confirm_notice', o.id)
  timer_clear(timers, 'auto_confirm', o.id)
end
emit(order_stream, o, target == 'DISPATCHED' and 'OrderDispatched' or 'OrderConfirmed',
  {by = actor}, now)
return reply('ok', o)
