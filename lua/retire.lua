--[[
  retire: takes a settled, archived order out of live state once it has
  rested for the live retention. Safe beside live traffic and repeatable:
  it re-checks everything in the same atomic step and never removes an
  order that moved, has a step ahead, or has an event not yet committed to
  the archive.

  Keys:
    order_key        order hash {pN}:o:<order_id>
    resting          resting index (zset) {pN}:resting
    inflight         in-flight index (zset) {pN}:inflight
    wheel            timer wheel (zset) {pN}:wheel
    orders_stream    orders stream {pN}:orders
    payments_stream  payments stream {pN}:payments
    rest_stream      restaurant stream {pN}:restaurant
    batch_stream     batch stream {pN}:batch
    per line: item_key, pcr_key
      (item hash, retired per-customer hash {pN}:r:<rid>:i:<item>:pcr)
  Args:
    order_id: str    order id
    retention: ms    live retention
    group: str       the archiver's consumer group
    backoff: ms      before an order kept for a passing reason is looked at again
  Reply: Retired
  Output:
    {'retired', status, pay}
    {'kept', why}: gone (no such order; its index entry is dropped), moved
      (not a final pair: dropped from the index, the archiver adds it again
      when it rests), young (rested less than the retention), timers (a
      delayed task is set), in_flight, unarchived (an event not yet
      committed to the archive), unhandled (an event a saga group has not
      handled yet: e.g. the payment hop still owes the provider lookup of an
      order rejected without a recorded payment), lines (the keys do not
      match its lines).
  Final pairs: CONFIRMED with CAPTURED; REJECTED with NONE, DECLINED,
  VOIDED or REFUNDED.
  Archived and handled: for every event the order wrote, every consumer
  group of its stream (the archiver, which acknowledges only after the batch
  committed in PostgreSQL, and the saga groups) has delivered past it and
  does not hold it pending.
  Effects: the order hash is deleted. For an order that kept its stock
  (not rejected) each line's units leave `supplied` and join `retired`
  (`sv` bumped), so supplied = on hand + units held by live orders still
  holds; counted lines move to the retired per-customer hash, so the
  per-customer counters (which keep limiting the customer) stay explained.
  The idempotency record stays until its TTL.
  Memory: finishes (work already accepted: runs past maxmemory, allow-oom).
  Bounded: O(events + lines).
]]

local o = load_order(order_key)
if not o then
  rcall('ZREM', resting, order_id)
  return {'kept', 'gone'}
end
local final = (o.status == 'CONFIRMED' and o.pay == 'CAPTURED')
  or (o.status == 'REJECTED' and settled(o.status, o.pay))
if not final then
  rcall('ZREM', resting, order_id)
  return {'kept', 'moved'}
end
local now = now_ms()
local function later(why)
  rcall('ZADD', resting, now - retention + backoff, order_id)
  return {'kept', why}
end
if now - tonumber(o.updated or '0') < retention then
  rcall('ZADD', resting, tonumber(o.updated or '0'), order_id)
  return {'kept', 'young'}
end
for _, kind in ipairs(TIMER_KINDS) do
  if rcall('ZSCORE', wheel, kind .. '|' .. order_id) then return later('timers') end
end
if rcall('ZSCORE', inflight, order_id) then return later('in_flight') end

-- "ms-seq" as two numbers (ms < 2^53: exact in a Lua number).
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function id_le(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  return ams < bms or (ams == bms and aseq <= bseq)
end
local streams = {}
for _, stream in ipairs({orders_stream, payments_stream, rest_stream, batch_stream}) do
  streams[stream] = false
end
-- Per stream, read once: each group's last-delivered id and the lowest id
-- it holds pending ('' when none).
local function group_states(stream)
  if streams[stream] == false then
    local states = {}
    local ok, groups = pcall(rcall, 'XINFO', 'GROUPS', stream)
    if ok then
      for _, g in ipairs(groups) do
        local info = {}
        for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
        local state = {name = info['name'], delivered = info['last-delivered-id'], lowest_pending = ''}
        if tonumber(info['pending']) > 0 then
          state.lowest_pending = rcall('XPENDING', stream, state.name)[2]
        end
        states[#states + 1] = state
      end
    end
    streams[stream] = states
  end
  return streams[stream]
end
-- Whether `state`'s group has delivered `id` and holds it no longer pending.
local function done_with(stream, state, id)
  if state.delivered == '' or not id_le(id, state.delivered) then return false end
  -- Pending entries all lie at or above the lowest: only then ask for this one.
  return not (state.lowest_pending ~= '' and id_le(state.lowest_pending, id)
    and #rcall('XPENDING', stream, state.name, id, id, 1) > 0)
end
for ev in string.gmatch(o.evs or '', '%S+') do
  local stream, id = string.match(ev, '^(.*)|(%d+%-%d+)$')
  if not stream or streams[stream] == nil then return later('unarchived') end
  local archived = false
  for _, state in ipairs(group_states(stream)) do
    if not done_with(stream, state, id) then
      return later(state.name == group and 'unarchived' or 'unhandled')
    end
    archived = archived or state.name == group
  end
  if not archived then return later('unarchived') end
end

local lines = cjson.decode(o.lines)
if #KEYS ~= LINE_KEYS - 1 + 2 * #lines then return {'kept', 'lines'} end
if o.status ~= 'REJECTED' then
  for i, line in ipairs(lines) do
    local item_key, pcr_key = KEYS[LINE_KEYS + 2 * (i - 1)], KEYS[LINE_KEYS + 2 * i - 1]
    if rcall('EXISTS', item_key) == 1 then
      rcall('HINCRBY', item_key, 'supplied', -line[2])
      rcall('HINCRBY', item_key, 'retired', line[2])
      rcall('HINCRBY', item_key, 'sv', 1)
      if tonumber(line[4]) == 1 then rcall('HINCRBY', pcr_key, o.cust, line[2]) end
    end
  end
end
rcall('DEL', order_key)
rcall('ZREM', resting, order_id)
return {'retired', o.status, o.pay}
