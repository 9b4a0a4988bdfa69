--[[
  restaurant_upsert: create or replace (put) or partly update (patch) a
  restaurant in the menu read model that order placement checks.

  @keys 3
  Input:
    KEYS[1] restaurant hash     {pN}:r:<rid>
    KEYS[2] restaurants set     {pN}:restaurants
    KEYS[3] menu stream         {pN}:menu (or the batch stream)
    ARGV[1] put | patch
    ARGV[2] restaurant id
    ARGV[3] name ('' = unchanged, patch only)
    ARGV[4] open: '1' | '0' | '' (unchanged)
    ARGV[5] auto_approve: '1' | '0' | ''
  Output:
    {'ok', name, open, auto_approve} or {'err', 'restaurant_not_found'} (patch
    of an unknown restaurant: nothing changed).
  Events: RestaurantUpserted on KEYS[3].
  Bounded: O(1).
]]
local restaurant_key, set_key, stream = KEYS[1], KEYS[2], KEYS[3]
local mode, rid, name, open, auto = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
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
rcall('XADD', stream, '*', 'v', '1', 'type', 'RestaurantUpserted', 'order', '', 'saga', '',
  'seq', tostring(seq), 'ts', tostring(now_ms()),
  'data', cjson.encode({r = rid, name = r[1], open = r[2] == '1', auto = r[3] == '1'}))
return {'ok', r[1] or '', r[2] or '0', r[3] or '0'}
