--[[
  menu_upsert: create or replace (put) or partly update (patch) one menu
  item; a menu edit is visible to the very next order.

  Keys:
    restaurant_key   restaurant hash {pN}:r:<rid>
    items_key        items set {pN}:r:<rid>:items
    item_key         item hash {pN}:r:<rid>:i:<item>
    stream           menu stream {pN}:menu (or the batch stream)
  Args:
    mode: Upsert       put | patch
    rid: str           restaurant id
    item: str          item id
    name: str?         none = unchanged
    price: int?        in won; none = unchanged
    stock: int?        put: stock on hand; patch: stock delta; none = unchanged
    available: flag?   none = unchanged
    max_pc: int?       max_per_customer (0 = no limit, none = unchanged)
    menu_max: count    maximum menu size (items per restaurant)
    stock_max: count   maximum stock on hand (units)
  Reply: ItemUpserted
  Output:
    {'ok', name, price, stock, available, max_per_customer}
    {'err', code}: restaurant_not_found, item_not_found (patch of an unknown
    item), stock_negative (a delta would take stock on hand below zero: units
    held by orders are never touched by an edit), stock_too_high (stock on
    hand would pass stock_max), menu_full.
  Events: MenuItemUpserted on stream.
  Invariant: `supplied` (initial stock plus restocks) moves with every stock
  change, so supplied = on hand + units held by live orders stays true.
  Memory: grows (new work: refused before it starts once Redis is past maxmemory).
  Bounded: O(1).
]]
if rcall('EXISTS', restaurant_key) == 0 then return {'err', 'restaurant_not_found'} end
local exists = rcall('EXISTS', item_key) == 1
if mode == 'patch' and not exists then return {'err', 'item_not_found'} end
if not exists and rcall('SCARD', items_key) >= menu_max then return {'err', 'menu_full'} end

local on_hand = tonumber(rcall('HGET', item_key, 'stock') or '0')
local delta = 0
if stock ~= '' then
  if mode == 'put' then delta = tonumber(stock) - on_hand else delta = tonumber(stock) end
  if on_hand + delta < 0 then return {'err', 'stock_negative'} end
  if on_hand + delta > stock_max then return {'err', 'stock_too_high'} end
end
local fields = {}
if name ~= '' then fields[#fields + 1] = 'name'; fields[#fields + 1] = name end
if price ~= '' then fields[#fields + 1] = 'price'; fields[#fields + 1] = price end
if available ~= '' then fields[#fields + 1] = 'available'; fields[#fields + 1] = available end
if max_pc ~= '' then fields[#fields + 1] = 'max_pc'; fields[#fields + 1] = max_pc end
if not exists then
  fields[#fields + 1] = 'stock'; fields[#fields + 1] = '0'
  fields[#fields + 1] = 'supplied'; fields[#fields + 1] = '0'
end
if #fields > 0 then rcall('HSET', item_key, unpack(fields)) end
if delta ~= 0 then
  rcall('HINCRBY', item_key, 'stock', delta)
  rcall('HINCRBY', item_key, 'supplied', delta)
  rcall('HINCRBY', item_key, 'sv', 1)
end
rcall('SADD', items_key, item)
local f = rcall('HMGET', item_key, 'name', 'price', 'stock', 'available', 'max_pc')
local seq = rcall('HINCRBY', restaurant_key, 'mseq', 1)
append_event(stream, 'MenuItemUpserted', '', '', seq, now_ms(),
  {r = rid, i = item, name = f[1], price = tonumber(f[2]), stock = tonumber(f[3]),
    delta = delta, available = f[4] == '1', max_pc = tonumber(f[5] or '0')})
return {'ok', f[1] or '', f[2] or '0', f[3] or '0', f[4] or '0', f[5] or '0'}
