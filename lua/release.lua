--[[
  release: compensation for an order whose saga cannot finish (payment window
  or approval timeout elapsed, reconciliation): reject it and put its stock
  back. The payment worker voids any authorization that remains.

  Keys:
    order_key     order hash
    order_stream  orders stream (or the batch stream)
    inflight      in-flight index
    timers        timer wheel
    per line: item_key, pc_key
  Args:
    reason: RejectReason  payment_window, approval_timeout, reconciled, ...
    expected: version?    expected order version (none = any)
  Reply: Transition
  Output:
    {'ok'|'noop'|'err', status, pay, version, decision, reason, detail}
    'noop': already rejected. 'err' detail: not_found, stale, finished (the
    order is APPROVED or later: use cancel), decided (the restaurant approved
    and the capture is under way: the capture settles it).
  Events: OrderRejected on order_stream.
  Memory: finishes (work already accepted: runs past maxmemory, allow-oom).
  Bounded: O(lines).
]]
local o = load_order(order_key)
if not o then return {'err', '', '', '0', '', '', 'not_found'} end
if o.status == 'REJECTED' then return reply('noop', o) end
if stale(o, expected) then return reply('err', o, 'stale') end
if o.status ~= 'PENDING' and o.status ~= 'PAID' then return reply('err', o, 'finished') end
if o.decision == 'approved' then return reply('err', o, 'decided') end
reject(inflight, timers, order_stream, o, reason, LINE_KEYS, now_ms())
return reply('ok', o)
