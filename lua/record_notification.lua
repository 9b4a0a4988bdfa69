--[[
  record_notification: the send record of one notification (order, kind).
  Written after the notifier delivered; checked before sending, so a
  notification goes out once in effect (a crash between send and record
  resends with the same idempotency key, which the receiver deduplicates).

  Keys:
    order_key   order hash
    stream      orders stream (or the batch stream)
  Args:
    kind: str        confirm_notice, ...
    key: str         idempotency key the notifier used
    channel: str     log, webhook
    attempts: count  attempts it took
  Reply: Recorded
  Output:
    {'ok'} recorded; {'noop'} already recorded; {'err', 'not_found'}.
  Events: NotificationSent on stream (an order event: archived into
    `notifications`).
  Memory: finishes (work already accepted: runs past maxmemory, allow-oom).
  Bounded: O(1).
]]
local o = load_order(order_key)
if not o then return {'err', 'not_found'} end
local field = 'sent:' .. kind
if o[field] then return {'noop'} end
local now = now_ms()
o[field] = tostring(now)
touch(o, field)
emit(stream, o, 'NotificationSent',
  {kind = kind, key = key, channel = channel, attempts = attempts}, now)
flush(o)
return {'ok'}
