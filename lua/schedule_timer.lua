--[[
  schedule_timer: set one delayed task of an order, only while the order is
  in the status the task is for (e.g. auto_confirm only while DISPATCHED: a
  customer who confirmed meanwhile is never auto-confirmed). Adding an
  existing timer keeps its first due time (ZADD NX): a redelivered request
  does not push the deadline back.

  Keys:
    order_key   order hash
    wheel       timer wheel {pN}:wheel
  Args:
    kind: TimerKind        payment_window | approval_timeout | confirm_notice | auto_confirm
    delay: ms              from now, Redis time
    required: OrderStatus  the status the order must be in
  Reply: Scheduled
  Output:
    {'ok', due} scheduled; {'noop', due} already scheduled;
    {'err', 'not_found' | 'status'} nothing changed.
  Memory: finishes (work already accepted: runs past maxmemory, allow-oom).
  Bounded: O(log(wheel size)).
]]
local o = load_order(order_key)
if not o then return {'err', 'not_found'} end
if o.status ~= required then return {'err', 'status'} end
local member = kind .. '|' .. o.id
local existing = rcall('ZSCORE', wheel, member)
if existing then return {'noop', tostring(existing)} end
local due = now_ms() + delay
rcall('ZADD', wheel, 'NX', due, member)
return {'ok', tostring(due)}
