--[[
  menu_upsert: create or replace (put) or partly update (patch) one menu
  item; a menu edit is visible to the very next order.

  @keys 4
  Input:
    KEYS[1] restaurant hash     {pN}:r:<rid>
    KEYS[2] items set           {pN}:r:<rid>:items
    KEYS[3] item hash           {pN}:r:<rid>:i:<item>
    KEYS[4] menu stream         {pN}:menu (or the batch stream)
    ARGV[1] put | patch
    ARGV[2] restaurant id
    ARGV[3] item id
    ARGV[4] name ('' = unchanged)
    ARGV[5] price in won ('' = unchanged)
    ARGV[6] put: stock on hand; patch: stock delta ('' = unchanged)
    ARGV[7] available '1' | '0' | ''
    ARGV[8] max_per_customer ('0' = no limit, '' = unchanged)
    ARGV[9] maximum menu size (items per restaurant)
    ARGV[10] maximum stock on hand (units)
  Output:
    {'ok', name, price, stock, available, max_per_customer}
    {'err', code}: restaurant_not_found, item_not_found (patch of an unknown
    item), stock_negative (a delta would take stock on hand below zero: units
    held by orders are never touched by an edit), stock_too_high (stock on
    hand would pass ARGV[10]), menu_full.
  Events: MenuItemUpserted on KEYS[4].
  Invariant: `supplied` (initial stock plus restocks) moves with every stock
  change, so supplied = on hand + units held by live orders stays true.
  Bounded: O(1).
]]
local restaurant_key, items_key, item_key, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode, rid, item = ARGV[1], ARGV[2], ARGV[3]
local name, price, stock, available, max_pc = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local menu_max, stock_max = tonumber(ARGV[9]), tonumber(ARGV[10])
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
rcall('XADD', stream, '*', 'v', '1', 'type', 'MenuItemUpserted', 'order', '', 'saga', '',
  'seq', tostring(seq), 'ts', tostring(now_ms()),
  'data', cjson.encode({r = rid, i = item, name = f[1], price = tonumber(f[2]),
    stock = tonumber(f[3]), delta = delta, available = f[4] == '1',
    max_pc = tonumber(f[5] or '0')}))
return {'ok', f[1] or '', f[2] or '0', f[3] or '0', f[4] or '0', f[5] or '0'}
