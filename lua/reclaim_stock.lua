--[[
  reclaim_stock: reconciliation returns units held by no live order (their
  order is gone) to stock on hand, and removes per-customer counts no live
  order backs. `supplied` does not move: the units were supplied, then
  stranded; now they are on hand again.

  @keys 4
  Input:
    KEYS[1] restaurant hash      {pN}:r:<rid>
    KEYS[2] item hash            {pN}:r:<rid>:i:<item>
    KEYS[3] per-customer hash    {pN}:r:<rid>:i:<item>:pc
    KEYS[4] batch stream         {pN}:batch
    ARGV[1] restaurant id
    ARGV[2] item id
    ARGV[3] units to return to stock (>= 0)
    ARGV[4] the item's stock version (`sv`) the caller saw before counting
            (compare-and-set: any stock change since, even one undone by
            another, refuses the fix and the caller rescans)
    ARGV[5], ARGV[6] ... customer, units to remove from their count
  Output:
    {'ok', stock} or {'err', 'stale' | 'not_found' | 'overdraw'}.
  Events: StockReclaimed on KEYS[4].
  Invariant: stock on hand + units held by live orders = supplied again.
  Bounded: O(customers listed).
]]
local restaurant_key, item_key, pc_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid, item, units, seen = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if rcall('EXISTS', item_key) == 0 then return {'err', 'not_found'} end
if (rcall('HGET', item_key, 'sv') or '0') ~= seen then return {'err', 'stale'} end
for i = 5, #ARGV, 2 do
  local held = tonumber(rcall('HGET', pc_key, ARGV[i]) or '0')
  if held < tonumber(ARGV[i + 1]) then return {'err', 'overdraw'} end
end
for i = 5, #ARGV, 2 do
  local left = rcall('HINCRBY', pc_key, ARGV[i], -tonumber(ARGV[i + 1]))
  if left <= 0 then rcall('HDEL', pc_key, ARGV[i]) end
end
local now_stock = rcall('HINCRBY', item_key, 'stock', units)
rcall('HINCRBY', item_key, 'sv', 1)
local seq = rcall('HINCRBY', restaurant_key, 'mseq', 1)
rcall('XADD', stream, '*', 'v', '1', 'type', 'StockReclaimed', 'order', '', 'saga', '',
  'seq', tostring(seq), 'ts', tostring(now_ms()),
  'data', cjson.encode({r = rid, i = item, units = units, stock = now_stock}))
return {'ok', tostring(now_stock)}
