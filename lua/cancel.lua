--[[
  cancel: a customer withdraws an order before it is approved, or an admin
  cancels one at any time. The order is rejected (`cancelled`) and its stock
  released here; the payment worker then voids an authorization or refunds a
  capture.

  Keys:
    order_key     order hash
    order_stream  orders stream (or the batch stream)
    inflight      in-flight index
    timers        timer wheel
    per line: item_key, pc_key
  Args:
    actor: Actor          customer | admin
    expected: version?    expected order version (none = any)
  Reply: Transition
  Output:
    {'ok'|'noop'|'err', status, pay, version, decision, reason, detail}
    'noop': already rejected (whatever the reason). 'err' detail: not_found,
    stale, too_late (a customer once the restaurant accepted, or later).
  Events: OrderRejected (reason cancelled) on order_stream.
  Memory: finishes (work already accepted: runs past maxmemory, allow-oom).
  Bounded: O(lines).
]]
local o = load_order(order_key)
if not o then return {'err', '', '', '0', '', '', 'not_found'} end
if o.status == 'REJECTED' then return reply('noop', o) end
if stale(o, expected) then return reply('err', o, 'stale') end
-- A customer cancels only before approval: once the restaurant has
-- accepted (decision set, status still PAID until the capture), too late.
if actor ~= 'admin' and ((o.status ~= 'PENDING' and o.status ~= 'PAID') or o.decision ~= '') then
  return reply('err', o, 'too_late')
end
reject(inflight, timers, order_stream, o, 'cancelled', LINE_KEYS, now_ms())
return reply('ok', o)
