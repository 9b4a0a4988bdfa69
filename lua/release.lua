--[[
  release: compensation for an order whose saga cannot finish (payment window
  or approval timeout elapsed, reconciliation): reject it and put its stock
  back. The payment worker voids any authorization that remains.

  @keys 4 + 2 per line
  Input:
    KEYS[1] order hash
    KEYS[2] orders stream (or the batch stream)
    KEYS[3] in-flight index
    KEYS[4] timer wheel
    KEYS[3+2i], KEYS[4+2i]  line i: item hash, per-customer hash
    ARGV[1] reason (payment_window, approval_timeout, reconciled, ...)
    ARGV[2] expected order version ('' = any)
  Output:
    {'ok'|'noop'|'err', status, pay, version, decision, reason, detail}
    'noop': already rejected. 'err' detail: not_found, stale, finished (the
    order is APPROVED or later: use cancel), decided (the restaurant approved
    and the capture is under way: the capture settles it).
  Events: OrderRejected on KEYS[2].
  Bounded: O(lines).
]]
local order_key, order_stream, inflight, timers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local reason, expected = ARGV[1], ARGV[2]
local o = load_order(order_key)
if not o then return {'err', '', '', '0', '', '', 'not_found'} end
if o.status == 'REJECTED' then return reply('noop', o) end
if stale(o, expected) then return reply('err', o, 'stale') end
if o.status ~= 'PENDING' and o.status ~= 'PAID' then return reply('err', o, 'finished') end
if o.decision == 'approved' then return reply('err', o, 'decided') end
reject(order_key, inflight, timers, order_stream, o, reason, 5, now_ms())
return reply('ok', o)
