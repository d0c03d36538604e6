-- Write scoring states and their schedule entries atomically, in one command.
--
-- KEYS[1..n]       scoring-state keys          ARGV[1]  TTL in seconds (0: none)
-- KEYS[n+1..n+m]   schedule sorted sets        ARGV[2]  n
--                                              ARGV[3..n+2]  the states' blobs
--                                              ARGV[n+3]  msgpack list, one entry per sorted
--                                                set: {{score, member, ...}, {member, ...}}
--                                                (members to add, then members to remove)
--
-- One script call instead of a pipeline: redis-py spends ~15 us of client CPU packing
-- and parsing each pipelined command, more than the rest of a customer's scoring.
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = 1, n do
  if ttl > 0 then
    redis.call('SET', KEYS[i], ARGV[i + 2], 'EX', ttl)
  else
    redis.call('SET', KEYS[i], ARGV[i + 2])
  end
end

-- unpack() is bounded by Lua's C stack (~8000 values): send long lists in chunks.
local CHUNK = 1000
local sets = cmsgpack.unpack(ARGV[n + 3])
for j, ops in ipairs(sets) do
  local key = KEYS[n + j]
  local adds, gone = ops[1], ops[2]
  for s = 1, #adds, 2 * CHUNK do
    redis.call('ZADD', key, unpack(adds, s, math.min(s + 2 * CHUNK - 1, #adds)))
  end
  for s = 1, #gone, CHUNK do
    redis.call('ZREM', key, unpack(gone, s, math.min(s + CHUNK - 1, #gone)))
  end
end
return n
