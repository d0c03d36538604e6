-- Write scoring states and their schedule entries, conditionally and atomically.
--
-- KEYS[1..n]       customer keys ("<prefix>:{<id>}:p")   ARGV[1]  TTL in seconds (0: none)
-- KEYS[n+1..n+m]   schedule sorted sets                  ARGV[2]  n
--                                                        ARGV[3..n+2]  the states' blobs
--                                                                 ('' leaves the state)
--                                                        ARGV[n+3]  msgpack list, one entry
--                  per customer: {token, member, {{set index (1..m), due or false}, ...}}
--
-- A customer's write happens only if its token still names the stored state: the SHA-1
-- of the state's bytes ('' for no state), as the writer read it. Otherwise nothing of
-- that customer changes (state and schedule entries alike) and its position (1-based)
-- is returned: another worker scored the customer meanwhile, so the caller reads again.
-- Finding the very state being written is no conflict (a retry of a call that landed).
--
-- A state is stored after the customer's profile, in the same value (the layout is
-- described in profile_update.lua); the profile part is kept byte for byte and so is
-- its TTL. One script call instead of a pipeline: redis-py spends ~15 us of client CPU
-- packing and parsing each pipelined command, more than the rest of a customer's scoring.
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local plan = cmsgpack.unpack(ARGV[n + 3])
local sub = string.sub
local refused = {}
local adds, gone = {}, {}
for i = 1, n do
  local key = KEYS[i]
  local raw = redis.call('GET', key)
  local head, state = '\193\0\0\0\0', ''
  if raw then
    if string.byte(raw, 1) ~= 193 then error('not a customer value: ' .. key) end
    local len = struct.unpack('>I4', raw, 2)
    head, state = sub(raw, 1, 5 + len), sub(raw, 6 + len)
  end
  local token = #state > 0 and redis.sha1hex(state) or ''
  local entry = plan[i]
  local blob = ARGV[i + 2]
  -- A retried call whose first try landed finds its own state: not a conflict.
  if token ~= entry[1] and not (#blob > 0 and token == redis.sha1hex(blob)) then
    refused[#refused + 1] = i
  else
    if #blob == 0 then
      -- the state stays as it is
    elseif raw then
      redis.call('SET', key, head .. blob, 'KEEPTTL')
    elseif ttl > 0 then
      redis.call('SET', key, head .. blob, 'EX', ttl)
    else
      redis.call('SET', key, head .. blob)
    end
    for _, op in ipairs(entry[3]) do
      local set = op[1]
      if op[2] then
        adds[set] = adds[set] or {}
        local list = adds[set]
        list[#list + 1] = op[2]
        list[#list + 1] = entry[2]
      else
        gone[set] = gone[set] or {}
        gone[set][#gone[set] + 1] = entry[2]
      end
    end
  end
end

-- unpack() is bounded by Lua's C stack (~8000 values): send long lists in chunks.
local CHUNK = 1000
for set, list in pairs(adds) do
  for s = 1, #list, 2 * CHUNK do
    redis.call('ZADD', KEYS[n + set], unpack(list, s, math.min(s + 2 * CHUNK - 1, #list)))
  end
end
for set, list in pairs(gone) do
  for s = 1, #list, CHUNK do
    redis.call('ZREM', KEYS[n + set], unpack(list, s, math.min(s + CHUNK - 1, #list)))
  end
end
return refused
