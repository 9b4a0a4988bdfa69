--[[
  record_notification: the send record of one notification (order, kind).
  Written after the notifier delivered; checked before sending, so a
  notification goes out once in effect (a crash between send and record
  resends with the same idempotency key, which the receiver deduplicates).

  @keys 2
  Input:
    KEYS[1] order hash
    KEYS[2] orders stream (or the batch stream)
    ARGV[1] kind (confirm_notice, ...)
    ARGV[2] idempotency key the notifier used
    ARGV[3] channel (log, webhook)
    ARGV[4] attempts it took
  Output:
    {'ok'} recorded; {'noop'} already recorded; {'err', 'not_found'}.
  Events: NotificationSent on KEYS[2] (an order event: archived into
    `notifications`).
  Bounded: O(1).
]]
local order_key, stream = KEYS[1], KEYS[2]
local kind, key, channel, attempts = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local o = load_order(order_key)
if not o then return {'err', 'not_found'} end
local field = 'sent:' .. kind
if o[field] then return {'noop'} end
local now = now_ms()
rcall('HSET', order_key, field, tostring(now))
emit(stream, order_key, o, 'NotificationSent',
  {kind = kind, key = key, channel = channel, attempts = tonumber(attempts)}, now)
return {'ok'}
