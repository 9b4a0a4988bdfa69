--[[
  Helpers shared by every lunchrush script (prepended by the loader in
  engine::scripts, so each script stays one EVALSHA).

  The order hash fields they rely on:
    id saga cust rid status reason pay total lines ver seq created updated
    decision psp evs auto
  Every change of an item's stock also bumps its `sv` (stock version), so
  reconciliation can tell that nothing moved while it counted (no ABA).
  `lines` is JSON: [[item, qty, price, counted], ...]; `counted` is 1 when the
  line counts towards the item's max_per_customer (tracked in the item's
  per-customer hash, KEYS passed beside the item hash).
]]
local rcall = redis.call

-- Redis server time in milliseconds: one clock for every engine process.
local function now_ms()
  local t = rcall('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Starts tracking the changes made to `o`, the order at `key`: `flush`
-- writes them in one HSET (and moves the in-flight index once).
local function track(o, key)
  o._key, o._fields, o._dirty = key, {}, {}
  return o
end

-- Marks a field of `o` changed.
local function touch(o, field)
  if not o._dirty[field] then
    o._dirty[field] = true
    o._fields[#o._fields + 1] = field
  end
end

-- Reads the order hash into a tracked table, or nil when it does not exist.
local function load_order(key)
  local flat = rcall('HGETALL', key)
  if #flat == 0 then return nil end
  local o = {}
  for i = 1, #flat, 2 do o[flat[i]] = flat[i + 1] end
  return track(o, key)
end

-- Appends one event to `stream` in the entry layout every reader parses
-- (`engine::events`): version, type, order and saga ('' for none), sequence
-- number, Redis time (ms), JSON data. Returns the entry id.
local function append_event(stream, etype, order_id, saga, seq, ts, data)
  return rcall('XADD', stream, '*', 'v', '1', 'type', etype, 'order', order_id, 'saga', saga,
    'seq', tostring(seq), 'ts', tostring(ts), 'data', cjson.encode(data))
end

-- Appends one saga event to `stream` and records where it went on the order
-- (order events carry a per-order sequence number: gaps or repeats in the
-- archive prove a bug). Written with the order's other changes by `flush`.
local function emit(stream, o, etype, data, now)
  o.seq = tonumber(o.seq) + 1
  local id = append_event(stream, etype, o.id, o.saga, o.seq, now, data)
  o.evs = (o.evs or '') .. stream .. '|' .. id .. ' '
  touch(o, 'seq')
  touch(o, 'evs')
  return id
end

-- An order's saga is settled when no step is owed: a resting pair.
local function settled(status, pay)
  if status == 'REJECTED' then
    return pay == 'NONE' or pay == 'DECLINED' or pay == 'VOIDED' or pay == 'REFUNDED'
  end
  if status == 'APPROVED' or status == 'DISPATCHED' or status == 'CONFIRMED' then
    return pay == 'CAPTURED'
  end
  return false
end

-- Records a change of `fields`: bumps the version and the last-change time;
-- `flush` writes them and keeps the in-flight index (orders whose saga is not
-- settled, scored by last change) current.
local function save(inflight_key, o, fields, now)
  o.ver = tonumber(o.ver) + 1
  o.updated = now
  touch(o, 'ver')
  touch(o, 'updated')
  for _, f in ipairs(fields) do touch(o, f) end
  o._inflight = inflight_key
end

-- Writes every change made to `o` in one HSET, and the in-flight index once.
local function flush(o)
  if #o._fields == 0 then return end
  local flat = {}
  for _, f in ipairs(o._fields) do
    flat[#flat + 1] = f
    flat[#flat + 1] = tostring(o[f])
  end
  rcall('HSET', o._key, unpack(flat))
  if o._inflight then
    if settled(o.status, o.pay) then
      rcall('ZREM', o._inflight, o.id)
    else
      rcall('ZADD', o._inflight, o.updated, o.id)
    end
  end
  o._fields, o._dirty, o._inflight = {}, {}, nil
end

-- The reply every order transition gives: code, then the order's state
-- (its changes written first).
local function reply(code, o, detail)
  flush(o)
  return {code, o.status, o.pay, tostring(o.ver), o.decision or '', o.reason or '', detail or ''}
end

-- Puts every line's units back on hand and undoes the per-customer counts.
-- KEYS[first], KEYS[first+1] are line 1's item hash and per-customer hash, ...
-- Bounded: O(lines), at most 50.
local function release_lines(o, first)
  local lines = cjson.decode(o.lines)
  assert(#KEYS == first - 1 + 2 * #lines, 'line keys do not match the order lines')
  local released = {}
  for i, line in ipairs(lines) do
    local item_key = KEYS[first + 2 * (i - 1)]
    local pc_key = KEYS[first + 2 * (i - 1) + 1]
    rcall('HINCRBY', item_key, 'stock', line[2])
    rcall('HINCRBY', item_key, 'sv', 1)
    if tonumber(line[4]) == 1 then
      local left = rcall('HINCRBY', pc_key, o.cust, -line[2])
      if left <= 0 then rcall('HDEL', pc_key, o.cust) end
    end
    released[#released + 1] = {line[1], line[2]}
  end
  return released
end

-- The delayed tasks of an order, in the partition's timer wheel (a zset of
-- '<kind>|<order id>' scored by due time, ms of Redis time).
local TIMER_KINDS = {'payment_window', 'approval_timeout', 'confirm_notice', 'auto_confirm'}

local function timer_set(timers_key, kind, order_id, due)
  rcall('ZADD', timers_key, due, kind .. '|' .. order_id)
end

local function timer_clear(timers_key, kind, order_id)
  rcall('ZREM', timers_key, kind .. '|' .. order_id)
end

local function timers_clear_all(timers_key, order_id)
  for _, kind in ipairs(TIMER_KINDS) do timer_clear(timers_key, kind, order_id) end
end

-- Moves a not-yet-rejected order to REJECTED with `reason`, releasing its
-- stock, cancelling every timer it had, and emits OrderRejected to `stream`.
local function reject(inflight_key, timers_key, stream, o, reason, first_line_key, now)
  local released = release_lines(o, first_line_key)
  timers_clear_all(timers_key, o.id)
  o.status = 'REJECTED'
  o.reason = reason
  save(inflight_key, o, {'status', 'reason'}, now)
  emit(stream, o, 'OrderRejected', {reason = reason, pay = o.pay, released = released}, now)
end

-- Compare-and-set on the order version: '' accepts any version.
local function stale(o, expected)
  return expected ~= nil and expected ~= '' and tostring(o.ver) ~= expected
end
