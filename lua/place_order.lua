--[[
  place_order: idempotently place an order, reserving every line's stock
  all-or-nothing, in one atomic step.

  Keys:
    restaurant_key   restaurant hash {pN}:r:<rid>
    order_key        order hash {pN}:o:<order_id> (must not exist)
    idem_key         idempotency record {pN}:idem:<customer>:<key> (when
                     not `guarded`: the guard then holds the record)
    stream           orders stream {pN}:orders
    inflight         in-flight index (zset) {pN}:inflight
    timers           timer wheel (zset) {pN}:wheel
    guard_key        the customer's fingerprint guard {pC}:idemg:<customer>:<key>
                     when it lies in this script's slot (`guarded`), else
                     any key of the slot (unused)
    per line: item_key, pc_key
  Args:
    order_id: str         UUIDv7 carrying the partition
    saga: str             saga id
    customer: str         customer id
    rid: str              restaurant id
    fingerprint: str      request fingerprint (hex)
    expected_total: int   won
    idem_ttl: ms          idempotency record time-to-live (at least 24 h)
    payment_window: ms    the order is rejected if still PENDING then
    guarded: flag         the guard is in this script's slot: it holds
                          the key's first answer itself (one key per
                          placement, one round trip; a refusal writes
                          nothing, the guard included)
    per line: item str, qty int
  Reply: Placement
  Output:
    {'ok',  order_id, total, 'PENDING'}  placed
    {'dup', order_id, total, 'PENDING'}  same key and same request: the first answer
    {'err', code, detail}                refused, nothing changed; code is one of
      idempotency_conflict (same key, another request; detail: the order, or
      'another request' when the guard holds another fingerprint), restaurant_not_found,
      restaurant_closed, item_not_found, item_unavailable, out_of_stock,
      limit_exceeded (detail: comma-separated items), price_changed (detail:
      the current total)
  Events: OrderPlaced on stream. Timers: payment_window set.
  The order keeps whether its restaurant approved automatically when it was
  placed (`auto`, `a` in OrderPlaced): record_payment approves it by that.
  Invariant: stock on hand never goes below zero; a customer never holds
  more than max_per_customer; either every line is reserved or none is.
  Memory: grows (new work: refused before it starts once Redis is past maxmemory).
  Bounded: O(lines), lines <= 50.
]]
local n = (#ARGV - LINE_ARGS + 1) / 2
assert(n >= 1 and n == math.floor(n), 'lines come in item/qty pairs')
assert(#KEYS == LINE_KEYS - 1 + 2 * n, 'two keys per line')

-- The key's first answer: in the guard when guarded (a JSON record), else
-- in the idempotency record. A guard holding a bare fingerprint was set by
-- the engine for a placement in another partition (or by an older layout,
-- whose answer is in the idempotency record).
local held, previous
if guarded == '1' then
  held = rcall('GET', guard_key)
  if held and string.sub(held, 1, 1) == '{' then
    previous, held = held, nil
  elseif held == fingerprint then
    previous = rcall('GET', idem_key)
  end
else
  previous = rcall('GET', idem_key)
end
if held and held ~= fingerprint then
  return {'err', 'idempotency_conflict', 'another request'}
end
if previous then
  local p = cjson.decode(previous)
  if p.fp ~= fingerprint then
    return {'err', 'idempotency_conflict', p.order}
  end
  return {'dup', p.order, tostring(p.total), 'PENDING'}
end

local r = rcall('HMGET', restaurant_key, 'name', 'open', 'auto')
if not r[1] then return {'err', 'restaurant_not_found', rid} end
if r[2] ~= '1' then return {'err', 'restaurant_closed', rid} end
assert(rcall('EXISTS', order_key) == 0, 'order ids are unique')

local missing, unavailable, short, over = {}, {}, {}, {}
local total = 0
local lines = {}
local on_hand, seen = {}, {}
for i = 1, n do
  local item, qty = ARGV[LINE_ARGS + 2 * (i - 1)], tonumber(ARGV[LINE_ARGS + 2 * i - 1])
  local item_key, pc_key = KEYS[LINE_KEYS + 2 * (i - 1)], KEYS[LINE_KEYS + 2 * i - 1]
  assert(not seen[item_key], 'an item appears on one line only')
  seen[item_key] = true
  local f = rcall('HMGET', item_key, 'price', 'stock', 'available', 'max_pc', 'sv')
  if not f[1] then
    missing[#missing + 1] = item
  elseif f[3] ~= '1' then
    unavailable[#unavailable + 1] = item
  else
    local price, stock, max_pc = tonumber(f[1]), tonumber(f[2]), tonumber(f[4] or '0')
    if stock < qty then short[#short + 1] = item end
    local counted = 0
    if max_pc > 0 then
      counted = 1
      local held = tonumber(rcall('HGET', pc_key, customer) or '0')
      if held + qty > max_pc then over[#over + 1] = item end
    end
    total = total + price * qty
    lines[i] = {item, qty, price, counted}
    on_hand[i] = {stock, tonumber(f[5] or '0')}
  end
end
if #missing > 0 then return {'err', 'item_not_found', table.concat(missing, ',')} end
if #unavailable > 0 then return {'err', 'item_unavailable', table.concat(unavailable, ',')} end
if #short > 0 then return {'err', 'out_of_stock', table.concat(short, ',')} end
if #over > 0 then return {'err', 'limit_exceeded', table.concat(over, ',')} end
if total ~= expected_total then return {'err', 'price_changed', tostring(total)} end

-- Every check passed: reserve all lines (no early exit from here on). The
-- stock and its version as read above, in one write (an item is on one line
-- only: asserted above, and the engine refuses a request that repeats one).
for i = 1, n do
  local line = lines[i]
  local item_key, pc_key = KEYS[LINE_KEYS + 2 * (i - 1)], KEYS[LINE_KEYS + 2 * i - 1]
  local stock, sv = on_hand[i][1], on_hand[i][2]
  rcall('HSET', item_key, 'stock', stock - line[2], 'sv', sv + 1)
  if line[4] == 1 then rcall('HINCRBY', pc_key, customer, line[2]) end
end
-- The new order, written at once (no change tracking: every field is new):
-- its hash at version 1 with its one event, in flight, its payment window set.
local now = now_ms()
local at = tostring(now)
local auto = r[3] == '1'
local placed = {}
for i = 1, n do placed[i] = {lines[i][1], lines[i][2], lines[i][3]} end
local event = append_event(stream, 'OrderPlaced', order_id, saga, '1', at,
  {c = customer, r = rid, t = total, l = placed, a = auto})
rcall('HSET', order_key, 'id', order_id, 'saga', saga, 'cust', customer, 'rid', rid,
  'status', 'PENDING', 'reason', '', 'pay', 'NONE', 'total', tostring(total),
  'lines', cjson.encode(lines), 'ver', '1', 'seq', '1', 'created', at, 'updated', at,
  'decision', '', 'psp', '', 'evs', stream .. '|' .. event .. ' ', 'auto', auto and '1' or '0')
rcall('ZADD', inflight, at, order_id)
timer_set(timers, 'payment_window', order_id, now + payment_window)
-- The key's first answer, where the next request with the key looks.
rcall('SET', guarded == '1' and guard_key or idem_key,
  cjson.encode({fp = fingerprint, order = order_id, total = total}), 'PX', idem_ttl)
return {'ok', order_id, tostring(total), 'PENDING'}
