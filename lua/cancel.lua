--[[
  cancel: a customer withdraws an order before it is approved, or an admin
  cancels one at any time. The order is rejected (`cancelled`) and its stock
  released here; the payment worker then voids an authorization or refunds a
  capture.

  @keys 4 + 2 per line
  Input:
    KEYS[1] order hash
    KEYS[2] orders stream (or the batch stream)
    KEYS[3] in-flight index
    KEYS[4] timer wheel
    KEYS[3+2i], KEYS[4+2i]  line i: item hash, per-customer hash
    ARGV[1] actor: customer | admin
    ARGV[2] expected order version ('' = any)
  Output:
    {'ok'|'noop'|'err', status, pay, version, decision, reason, detail}
    'noop': already rejected (whatever the reason). 'err' detail: not_found,
    stale, too_late (a customer once the restaurant accepted, or later).
  Events: OrderRejected (reason cancelled) on KEYS[2].
  Bounded: O(lines).
]]
local order_key, order_stream, inflight, timers = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local actor, expected = ARGV[1], ARGV[2]
local o = load_order(order_key)
if not o then return {'err', '', '', '0', '', '', 'not_found'} end
if o.status == 'REJECTED' then return reply('noop', o) end
if stale(o, expected) then return reply('err', o, 'stale') end
-- A customer cancels only before approval: once the restaurant has
-- accepted (decision set, status still PAID until the capture), too late.
if actor ~= 'admin' and ((o.status ~= 'PENDING' and o.status ~= 'PAID') or o.decision ~= '') then
  return reply('err', o, 'too_late')
end
reject(order_key, inflight, timers, order_stream, o, 'cancelled', 5, now_ms())
return reply('ok', o)
