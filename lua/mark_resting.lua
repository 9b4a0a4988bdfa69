--[[
  mark_resting: add orders the archiver left at a final pair to their
  partition's resting index, the retirer's candidates. A script rather than
  a plain ZADD only so that it runs while Redis is past its maxmemory:
  retiring is how memory comes back, so the way to it must stay open.
  Re-adding a member keeps its first rest time (ZADD NX): the retire script
  re-checks everything anyway.

  Keys:
    resting     resting index {pN}:resting
  Args:
    per order: at int, order_id str
  Reply: Added
  Output:
    {added}  how many members were new
  Memory: finishes (work already accepted: runs past maxmemory, allow-oom).
  Bounded: O(orders × log(index size)), at most one archiver batch.
]]
local added = 0
for i = ORDER_ARGS, #ARGV, 2 do
  added = added + rcall('ZADD', resting, 'NX', ARGV[i], ARGV[i + 1])
end
return {tostring(added)}
