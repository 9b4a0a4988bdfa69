--[[
  restaurant_decision: the restaurant accepts or rejects a paid order.

  @keys 6 + 2 per line
  Input:
    KEYS[1] order hash
    KEYS[2] restaurant stream (or the batch stream)
    KEYS[3] orders stream (or the batch stream)
    KEYS[4] in-flight index
    KEYS[5] restaurant hash
    KEYS[6] timer wheel
    KEYS[5+2i], KEYS[6+2i]  line i: item hash, per-customer hash
    ARGV[1] approve | reject
    ARGV[2] the restaurant's note (reject only; free text, kept in the event)
    ARGV[3] expected order version ('' = any)
    ARGV[4] '1' to approve only while the restaurant is open (auto-approval)
  Output:
    {'ok'|'noop'|'err', status, pay, version, decision, reason, detail}
    'noop': the same decision was already taken.
    'err' detail: not_found, stale (version moved), not_paid (still PENDING:
    the restaurant sees an order only once it is paid), already_decided
    (the other decision was taken), finished (rejected or past approval),
    restaurant_closed (auto-approval of a closed restaurant).
  Events: RestaurantApproved on KEYS[2] (the payment worker then captures);
    RestaurantRejected (with the note) on KEYS[2] and OrderRejected
    (reason restaurant_rejected) on KEYS[3]: stock released here; the payment
    worker voids the authorization.
  Timers: either answer cancels approval_timeout (a rejection, every timer).
  Bounded: O(lines).
]]
local order_key, rest_stream, order_stream, inflight, restaurant_key, timers =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local decision, note, expected, require_open = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local o = load_order(order_key)
if not o then return {'err', '', '', '0', '', '', 'not_found'} end
local want = decision == 'approve' and 'approved' or 'rejected'
if o.decision == want then return reply('noop', o) end
if stale(o, expected) then return reply('err', o, 'stale') end
if o.decision ~= '' then return reply('err', o, 'already_decided') end
if o.status == 'PENDING' then return reply('err', o, 'not_paid') end
if o.status ~= 'PAID' then return reply('err', o, 'finished') end

local now = now_ms()
if decision == 'approve' then
  if require_open == '1' and rcall('HGET', restaurant_key, 'open') ~= '1' then
    return reply('err', o, 'restaurant_closed')
  end
  o.decision = 'approved'
  save(order_key, inflight, o, {'decision'}, now)
  timer_clear(timers, 'approval_timeout', o.id)
  emit(rest_stream, order_key, o, 'RestaurantApproved', {}, now)
else
  o.decision = 'rejected'
  save(order_key, inflight, o, {'decision'}, now)
  emit(rest_stream, order_key, o, 'RestaurantRejected', {note = note}, now)
  reject(order_key, inflight, timers, order_stream, o, 'restaurant_rejected', 7, now)
end
return reply('ok', o)
