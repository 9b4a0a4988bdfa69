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
    more: str                further outcomes recorded in the same step, in
                             order, comma-separated ('' for none): a sale
                             (authorize and capture in one provider call)
                             records 'authorized' then 'captured'
  Reply: Transition
  Output:
    {'ok'|'noop'|'err', status, pay, version, decision, reason, detail}
    'noop': the payment is already in that state (a redelivery), nothing changed.
    'err' detail: not_found, or illegal (the transition goes backwards, e.g.
    authorized after captured): that outcome and those after it change
    nothing (the ones before it stay recorded).
  Events: PaymentAuthorized, PaymentDeclined, PaymentCaptured, PaymentVoided,
    PaymentRefunded on pay_stream; OrderApproved or OrderRejected on order_stream;
    RestaurantApproved (automatic) on rest_stream. A sale: PaymentCaptured
    (sale, approved) alone.
  Automatic approval: PENDING+authorized of an order placed while its
    restaurant approved automatically (the order's `auto`, set by
    place_order; an order without it asks the restaurant: open and
    approving automatically) takes its approval in the same step (decision
    'approved', RestaurantApproved with automatic = true): the caller, who
    holds the order's payment, captures next without another hop.
  A sale: 'authorized' then 'captured' (one provider call) of a PENDING
    order that approves automatically is one transition, PENDING -> APPROVED
    and NONE -> CAPTURED, told by one event instead of four: PaymentCaptured
    with sale = true (it stands for PaymentAuthorized) and approved = true
    (for RestaurantApproved and OrderApproved).
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
  Memory: finishes (work already accepted: runs past maxmemory, allow-oom).
  Bounded: O(lines × outcomes), outcomes <= 3.
]]
-- Whether the restaurant approves an order (its `auto`) without being asked.
local function approves_automatically(auto)
  if auto == '1' or auto == '0' then return auto == '1' end
  local r = rcall('HMGET', restaurant_key, 'open', 'auto')
  return r[1] == '1' and r[2] == '1'
end

-- A sale of an order its restaurant approves automatically (see the
-- header): one known change, written at once from the fields it needs
-- (no table of the whole order).
if outcome == 'authorized' and more == 'captured' then
  local id, saga, status, pay, auto, psp, seq, ver, total, evs, reason = unpack(rcall('HMGET',
    order_key, 'id', 'saga', 'status', 'pay', 'auto', 'psp', 'seq', 'ver', 'total', 'evs', 'reason'))
  if pay == 'NONE' and status == 'PENDING' and approves_automatically(auto) then
    local now = now_ms()
    if psp_ref ~= '' then psp = psp_ref end
    seq, ver = string.format('%d', seq + 1), string.format('%d', ver + 1)
    local at = string.format('%d', now)
    local event = append_event(pay_stream, 'PaymentCaptured', id, saga, seq, at,
      {ref = psp or '', amount = tonumber(total), sale = true, approved = true})
    rcall('HSET', order_key, 'status', 'APPROVED', 'pay', 'CAPTURED', 'decision', 'approved',
      'psp', psp or '', 'ver', ver, 'seq', seq, 'updated', at,
      'evs', (evs or '') .. pay_stream .. '|' .. event .. ' ')
    timer_clear(timers, 'payment_window', id)
    -- Settled (approved and captured): out of the in-flight index.
    rcall('ZREM', inflight, id)
    return {'ok', 'APPROVED', 'CAPTURED', ver, 'approved', reason or '', ''}
  end
end

local o = load_order(order_key)
if not o then return {'err', '', '', '0', '', '', 'not_found'} end
local now = now_ms()

local TARGETS = {authorized = 'AUTHORIZED', declined = 'DECLINED', captured = 'CAPTURED',
  voided = 'VOIDED', refunded = 'REFUNDED', capture_failed = 'VOIDED', corrected = 'VOIDED'}
local EVENTS = {AUTHORIZED = 'PaymentAuthorized', DECLINED = 'PaymentDeclined',
  CAPTURED = 'PaymentCaptured', VOIDED = 'PaymentVoided', REFUNDED = 'PaymentRefunded'}

-- Records one outcome: 'ok', 'noop' or 'err' (nothing changed).
local function record(outcome, now)
  local target = TARGETS[outcome]
  assert(target, 'unknown payment outcome')
  if o.pay == target then return 'noop' end
  local legal = ({NONE = {AUTHORIZED = true, DECLINED = true},
    AUTHORIZED = {CAPTURED = true, VOIDED = true},
    CAPTURED = {REFUNDED = true, VOIDED = outcome == 'corrected'}})[o.pay]
  if not legal or not legal[target] then return 'err' end

  o.pay = target
  if psp_ref ~= '' then o.psp = psp_ref end
  local event = EVENTS[target]
  local data = {ref = o.psp, amount = tonumber(o.total)}
  if outcome == 'capture_failed' then data.failed = 'capture' end

  if target == 'AUTHORIZED' and o.status == 'PENDING' then
    o.status = 'PAID'
    save(inflight, o, {'pay', 'psp', 'status'}, now)
    timer_clear(timers, 'payment_window', o.id)
    emit(pay_stream, o, event, data, now)
    if approves_automatically(o.auto) then
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
  return 'ok'
end

local outcomes = {outcome}
for further in string.gmatch(more, '[^,]+') do outcomes[#outcomes + 1] = further end
assert(#outcomes <= 3, 'at most three outcomes in one step')
local code = 'noop'
for _, one in ipairs(outcomes) do
  local done = record(one, now)
  if done == 'err' then return reply('err', o, 'illegal') end
  if done == 'ok' then code = 'ok' end
end
return reply(code, o)
