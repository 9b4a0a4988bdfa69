--[[
  restaurant_upsert: create or replace (put) or partly update (patch) a
  restaurant in the menu read model that order placement checks.

  Keys:
    restaurant_key   restaurant hash {pN}:r:<rid>
    set_key          restaurants set {pN}:restaurants
    stream           menu stream {pN}:menu (or the batch stream)
  Args:
    mode: Upsert    put | patch
    rid: str        restaurant id
    name: str?      none = unchanged (patch only)
    open: flag?     none = unchanged
    auto: flag?     auto-approve; none = unchanged
  Reply: RestaurantUpserted
  Output:
    {'ok', name, open, auto_approve} or {'err', 'restaurant_not_found'} (patch
    of an unknown restaurant: nothing changed).
  Events: RestaurantUpserted on stream.
  Memory: grows (new work: refused before it starts once Redis is past maxmemory).
  Bounded: O(1).
]]
local exists = rcall('EXISTS', restaurant_key) == 1
if mode == 'patch' and not exists then return {'err', 'restaurant_not_found'} end
local fields = {}
if name ~= '' then fields[#fields + 1] = 'name'; fields[#fields + 1] = name end
if open ~= '' then fields[#fields + 1] = 'open'; fields[#fields + 1] = open end
if auto ~= '' then fields[#fields + 1] = 'auto'; fields[#fields + 1] = auto end
if #fields > 0 then rcall('HSET', restaurant_key, unpack(fields)) end
rcall('SADD', set_key, rid)
local r = rcall('HMGET', restaurant_key, 'name', 'open', 'auto')
local seq = rcall('HINCRBY', restaurant_key, 'mseq', 1)
append_event(stream, 'RestaurantUpserted', '', '', seq, now_ms(),
  {r = rid, name = r[1], open = r[2] == '1', auto = r[3] == '1'})
return {'ok', r[1] or '', r[2] or '0', r[3] or '0'}
