--[[
  reclaim_stock: reconciliation returns units held by no live order (their
  order is gone) to stock on hand, and removes per-customer counts no live
  order backs. `supplied` does not move: the units were supplied, then
  stranded; now they are on hand again.

  Keys:
    restaurant_key   restaurant hash {pN}:r:<rid>
    item_key         item hash {pN}:r:<rid>:i:<item>
    pc_key           per-customer hash {pN}:r:<rid>:i:<item>:pc
    stream           batch stream {pN}:batch
  Args:
    rid: str       restaurant id
    item: str      item id
    units: int     units to return to stock (>= 0)
    seen: int      the item's stock version (`sv`) the caller saw before counting
                   (compare-and-set: any stock change since, even one undone by
                   another, refuses the fix and the caller rescans)
    per customer: customer str, units int
  Reply: Reclaimed
  Output:
    {'ok', stock} or {'err', 'stale' | 'not_found' | 'overdraw'}.
  Events: StockReclaimed on stream.
  Invariant: stock on hand + units held by live orders = supplied again.
  Memory: finishes (work already accepted: runs past maxmemory, allow-oom).
  Bounded: O(customers listed).
]]
if rcall('EXISTS', item_key) == 0 then return {'err', 'not_found'} end
if tonumber(rcall('HGET', item_key, 'sv') or '0') ~= seen then return {'err', 'stale'} end
for i = CUSTOMER_ARGS, #ARGV, 2 do
  local held = tonumber(rcall('HGET', pc_key, ARGV[i]) or '0')
  if held < tonumber(ARGV[i + 1]) then return {'err', 'overdraw'} end
end
for i = CUSTOMER_ARGS, #ARGV, 2 do
  local left = rcall('HINCRBY', pc_key, ARGV[i], -tonumber(ARGV[i + 1]))
  if left <= 0 then rcall('HDEL', pc_key, ARGV[i]) end
end
local now_stock = rcall('HINCRBY', item_key, 'stock', units)
rcall('HINCRBY', item_key, 'sv', 1)
local seq = rcall('HINCRBY', restaurant_key, 'mseq', 1)
append_event(stream, 'StockReclaimed', '', '', seq, now_ms(),
  {r = rid, i = item, units = units, stock = now_stock})
return {'ok', tostring(now_stock)}
