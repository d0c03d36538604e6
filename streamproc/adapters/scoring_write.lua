-- Write scoring states and their schedule entries atomically, in one command.
--
-- KEYS[1..n]       customer keys ("<prefix>:{<id>}:p")   ARGV[1]  TTL in seconds (0: none)
-- KEYS[n+1..n+m]   schedule sorted sets                  ARGV[2]  n
--                                                        ARGV[3..n+2]  the states' blobs
--                                                        ARGV[n+3]  msgpack list, one entry
--                                  per sorted set: {{score, member, ...}, {member, ...}}
--                                  (members to add, then members to remove)
--
-- A state is stored after the customer's profile, in the same value (the layout is
-- described in profile_update.lua); the profile part is kept byte for byte and so is
-- its TTL. A bare profile written before the two shared a key gains the layout here,
-- and its old state key goes.
--
-- One script call instead of a pipeline: redis-py spends ~15 us of client CPU packing
-- and parsing each pipelined command, more than the rest of a customer's scoring.
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local sub = string.sub
for i = 1, n do
  local key = KEYS[i]
  local raw = redis.call('GET', key)
  local head
  if raw and string.byte(raw, 1) == 193 then
    head = sub(raw, 1, 5 + struct.unpack('>I4', raw, 2))
  else
    head = '\193' .. struct.pack('>I4', raw and #raw or 0) .. (raw or '')
    redis.call('DEL', sub(key, 1, -2) .. 's')  -- an earlier version's state key, if any
  end
  if raw then
    redis.call('SET', key, head .. ARGV[i + 2], 'KEEPTTL')
  elseif ttl > 0 then
    redis.call('SET', key, head .. ARGV[i + 2], 'EX', ttl)
  else
    redis.call('SET', key, head .. ARGV[i + 2])
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
