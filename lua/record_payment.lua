--[[
  record_payment: record what the payment provider says happened to an
  order's payment, and move the order accordingly.

  Keys:
    order_key       order hash
    pay_stream      payments stream (or the batch stream)
    order_stream    orders stream (or the batch stream)
    rest_stream     restaurant stream (or the batch stream)
    inflight        in-flight index
    timers          timer wheel
    restaurant_key  restaurant hash
    per line: item_key, pc_key
  Args:
    outcome: PaymentOutcome  authorized | declined | captured | voided | refunded |
                capture_failed | corrected (reconciliation: the provider holds no
                capture for an order recorded CAPTURED; the payment becomes
                VOIDED, the order REJECTED reconciled)
    psp_ref: str             provider reference
    approval_timeout: ms     a PAID order not answered by then is rejected
  Reply: Transition
  Output:
    {'ok'|'noop'|'err', status, pay, version, decision, reason, detail}
    'noop': the payment is already in that state (a redelivery), nothing changed.
    'err' detail: not_found, or illegal (the transition goes backwards, e.g.
    authorized after captured), nothing changed.
  Events: PaymentAuthorized, PaymentDeclined, PaymentCaptured, PaymentVoided,
    PaymentRefunded on pay_stream; OrderApproved or OrderRejected on order_stream;
    RestaurantApproved (automatic) on rest_stream.
  Automatic approval: PENDING+authorized of a restaurant that is open and
    approves automatically takes its approval in the same step (decision
    'approved', RestaurantApproved with automatic = true): the caller, who
    holds the order's payment, captures next without another hop.
  Timers: PENDING -> PAID cancels payment_window and, unless approved
    automatically, sets approval_timeout; a rejection cancels every timer of
    the order.
  Transitions (payment): NONE -> AUTHORIZED | DECLINED; AUTHORIZED -> CAPTURED |
    VOIDED; CAPTURED -> REFUNDED. Order: PENDING+authorized -> PAID;
    PENDING+declined -> REJECTED payment_declined (stock released);
    PAID+captured -> APPROVED; a void or refund of an order not yet rejected
    rejects it (capture_failed) and releases its stock.
  Why no version compare-and-set: these are facts that already happened at
  the provider; refusing one as stale would lose money. They are guarded by
  the payment state machine instead, which only moves forward.
  Bounded: O(lines).
]]
local o = load_order(order_key)
if not o then return {'err', '', '', '0', '', '', 'not_found'} end

local target = ({authorized = 'AUTHORIZED', declined = 'DECLINED', captured = 'CAPTURED',
  voided = 'VOIDED', refunded = 'REFUNDED', capture_failed = 'VOIDED', corrected = 'VOIDED'})[outcome]
assert(target, 'unknown payment outcome')
if o.pay == target then return reply('noop', o) end
local legal = ({NONE = {AUTHORIZED = true, DECLINED = true},
  AUTHORIZED = {CAPTURED = true, VOIDED = true},
  CAPTURED = {REFUNDED = true, VOIDED = outcome == 'corrected'}})[o.pay]
if not legal or not legal[target] then return reply('err', o, 'illegal') end

local now = now_ms()
o.pay = target
if psp_ref ~= '' then o.psp = psp_ref end
local event = ({AUTHORIZED = 'PaymentAuthorized', DECLINED = 'PaymentDeclined',
  CAPTURED = 'PaymentCaptured', VOIDED = 'PaymentVoided', REFUNDED = 'PaymentRefunded'})[target]
local data = {ref = o.psp, amount = tonumber(o.total)}
if outcome == 'capture_failed' then data.failed = 'capture' end

if target == 'AUTHORIZED' and o.status == 'PENDING' then
  o.status = 'PAID'
  save(inflight, o, {'pay', 'psp', 'status'}, now)
  timer_clear(timers, 'payment_window', o.id)
  emit(pay_stream, o, event, data, now)
  local r = rcall('HMGET', restaurant_key, 'open', 'auto')
  if r[1] == '1' and r[2] == '1' then
    o.decision = 'approved'
    touch(o, 'decision')
    emit(rest_stream, o, 'RestaurantApproved', {automatic = true}, now)
  else
    timer_set(timers, 'approval_timeout', o.id, now + approval_timeout)
  end
elseif target == 'DECLINED' and o.status == 'PENDING' then
  save(inflight, o, {'pay', 'psp'}, now)
  emit(pay_stream, o, event, data, now)
  reject(inflight, timers, order_stream, o, 'payment_declined', LINE_KEYS, now)
elseif target == 'CAPTURED' and o.status == 'PAID' then
  o.status = 'APPROVED'
  save(inflight, o, {'pay', 'psp', 'status'}, now)
  emit(pay_stream, o, event, data, now)
  emit(order_stream, o, 'OrderApproved', {}, now)
elseif (target == 'VOIDED' or target == 'REFUNDED') and o.status ~= 'REJECTED' then
  save(inflight, o, {'pay', 'psp'}, now)
  if outcome == 'corrected' then data.corrected = true end
  emit(pay_stream, o, event, data, now)
  reject(inflight, timers, order_stream, o,
    outcome == 'corrected' and 'reconciled' or 'capture_failed', LINE_KEYS, now)
else
  -- The order already moved on (e.g. rejected while the provider worked):
  -- record the fact; the payment worker settles what it implies.
  save(inflight, o, {'pay', 'psp'}, now)
  emit(pay_stream, o, event, data, now)
end
return reply('ok', o)
