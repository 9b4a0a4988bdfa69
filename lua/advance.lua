--[[
  advance: delivery started (APPROVED -> DISPATCHED) or purchase confirmed
  (DISPATCHED -> CONFIRMED; an admin may also confirm an APPROVED order).

  @keys 3
  Input:
    KEYS[1] order hash
    KEYS[2] orders stream (or the batch stream)
    KEYS[3] in-flight index
    ARGV[1] target: DISPATCHED | CONFIRMED
    ARGV[2] expected order version ('' = any)
    ARGV[3] actor: restaurant | customer | admin | timer
  Output:
    {'ok'|'noop'|'err', status, pay, version, decision, reason, detail}
    'noop': already there. 'err' detail: not_found, stale, illegal (not
    reachable from the current status).
  Events: OrderDispatched or OrderConfirmed on KEYS[2].
  Bounded: O(1).
]]
local order_key, order_stream, inflight = KEYS[1], KEYS[2], KEYS[3]
local target, expected, actor = ARGV[1], ARGV[2], ARGV[3]
local o = load_order(order_key)
if not o then return {'err', '', '', '0', '', '', 'not_found'} end
if o.status == target then return reply('noop', o) end
if stale(o, expected) then return reply('err', o, 'stale') end
local from_ok
if target == 'DISPATCHED' then
  from_ok = o.status == 'APPROVED'
elseif target == 'CONFIRMED' then
  from_ok = o.status == 'DISPATCHED' or (actor == 'admin' and o.status == 'APPROVED')
end
if not from_ok then return reply('err', o, 'illegal') end
local now = now_ms()
o.status = target
save(order_key, inflight, o, {'status'}, now)
emit(order_stream, order_key, o, target == 'DISPATCHED' and 'OrderDispatched' or 'OrderConfirmed',
  {by = actor}, now)
return reply('ok', o)
