--[[
  restaurant_decision: the restaurant accepts or rejects a paid order.

  Keys:
    order_key       order hash
    rest_stream     restaurant stream (or the batch stream)
    order_stream    orders stream (or the batch stream)
    inflight        in-flight index
    restaurant_key  restaurant hash
    timers          timer wheel
    per line: item_key, pc_key
  Args:
    decision: Decision    approve | reject
    note: str             the restaurant's note (reject only; free text, kept in the event)
    expected: version?    expected order version (none = any)
    automatic: flag       the restaurant's automatic approval: only while it is
                          open and approves automatically
  Reply: Transition
  Output:
    {'ok'|'noop'|'err', status, pay, version, decision, reason, detail}
    'noop': the same decision was already taken.
    'err' detail: not_found, stale (version moved), not_paid (still PENDING:
    the restaurant sees an order only once it is paid), already_decided
    (the other decision was taken), finished (rejected or past approval),
    restaurant_closed (automatic approval of a closed restaurant), manual
    (automatic approval of a restaurant that answers itself).
  Events: RestaurantApproved on rest_stream (the payment worker then captures);
    RestaurantRejected (with the note) on rest_stream and OrderRejected
    (reason restaurant_rejected) on order_stream: stock released here; the payment
    worker voids the authorization.
  Timers: either answer cancels approval_timeout (a rejection, every timer).
  Memory: finishes (work already accepted: runs past maxmemory, allow-oom).
  Bounded: O(lines).
]]
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
  if automatic == '1' then
    local r = rcall('HMGET', restaurant_key, 'open', 'auto')
    if r[2] ~= '1' then return reply('err', o, 'manual') end
    if r[1] ~= '1' then return reply('err', o, 'restaurant_closed') end
  end
  o.decision = 'approved'
  save(inflight, o, {'decision'}, now)
  timer_clear(timers, 'approval_timeout', o.id)
  emit(rest_stream, o, 'RestaurantApproved', {}, now)
else
  o.decision = 'rejected'
  save(inflight, o, {'decision'}, now)
  emit(rest_stream, o, 'RestaurantRejected', {note = note}, now)
  reject(inflight, timers, order_stream, o, 'restaurant_rejected', LINE_KEYS, now)
end
return reply('ok', o)
