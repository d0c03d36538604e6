-- Atomic, idempotent batch update of customer profiles.
--
-- KEYS[i]  profile key of customer i ("<prefix>:{<customer_id>}:p"); its dedupe,
--          marker and output-state keys share the hash tag, so each customer's
--          keys live in one Redis Cluster slot.
-- ARGV[1]  msgpack config: taus (decayed field -> tau seconds), maxcat, mttl
--          (marker TTL), dttl (dedupe TTL), pttl (profile TTL, 0 = none)
-- ARGV[2]  msgpack list, one entry per KEYS[i]: list of {event_id, ts, ops}
--
-- The op codes and their meaning mirror streamproc/core/features.py:apply_ops;
-- tests run the same streams through both and compare. This file holds no
-- business rules: which ops an event produces is decided in Python.
--
-- Returns, per customer: {profile_blob, output_state_blob|false, {1|0 per event}}.

local cfg = cmsgpack.unpack(ARGV[1])
local groups = cmsgpack.unpack(ARGV[2])
local taus, maxcat, mttl, dttl, pttl = cfg.taus, cfg.maxcat, cfg.mttl, cfg.dttl, cfg.pttl
local exp = math.exp
local window = 4 * 3600

local function decay_add(st, field, value, ts)
  local ref = st.dt
  if ref == nil then
    ref = ts
    st.dt = ts
  elseif ts > ref then
    for name, tau in pairs(taus) do
      local v = st[name]
      if v ~= nil then st[name] = v * exp(-(ts - ref) / tau) end
    end
    ref = ts
    st.dt = ts
  end
  st[field] = (st[field] or 0) + value * exp(-(ref - ts) / taus[field])
end

local function category_add(st, cat, weight)
  local cats = st.k
  if type(cats) ~= 'table' then cats = {}; st.k = cats end
  if cats[cat] ~= nil then cats[cat] = cats[cat] + weight; return end
  local n, weakest, floor = 0, nil, nil
  for name, w in pairs(cats) do
    n = n + 1
    if floor == nil or w < floor or (w == floor and name < weakest) then
      weakest, floor = name, w
    end
  end
  if n < maxcat then cats[cat] = weight; return end
  cats[weakest] = nil
  cats[cat] = floor + weight
end

local function mark(st, base, op, ts)
  local name, field, value, other, ofield, ovalue = op[2], op[3], op[4], op[5], op[6], op[7]
  if string.sub(name, -1) == ':' then
    local last = st.ls
    if last == nil or ts - (st['ls@'] or -1e300) > window then return end
    name = name .. last
    other = other .. last
  end
  if redis.call('SET', base .. 'm:' .. name, 1, 'NX', 'EX', mttl) then
    st[field] = (st[field] or 0) + value
    if other ~= '' and redis.call('EXISTS', base .. 'm:' .. other) == 1 then
      st[ofield] = (st[ofield] or 0) + ovalue
    end
  end
end

local result = {}
for i, key in ipairs(KEYS) do
  local base = string.sub(key, 1, -2)
  local blob = redis.call('GET', key)
  local st = {}
  if blob then st = cmsgpack.unpack(blob) end
  local flags = {}
  local changed = false
  for j, ev in ipairs(groups[i]) do
    local eid, ts, ops = ev[1], ev[2], ev[3]
    if redis.call('SET', base .. 'e:' .. eid, 1, 'NX', 'EX', dttl) then
      changed = true
      flags[j] = 1
      for _, op in ipairs(ops) do
        local code = op[1]
        if code == 1 then
          st[op[2]] = (st[op[2]] or 0) + op[3]
        elseif code == 2 then
          local cur = st[op[2]]
          if cur == nil or op[3] > cur then st[op[2]] = op[3] end
        elseif code == 3 then
          local cur = st[op[2]]
          if cur == nil or op[3] < cur then st[op[2]] = op[3] end
        elseif code == 4 then
          decay_add(st, op[2], op[3], ts)
        elseif code == 5 then
          category_add(st, op[2], op[3])
        elseif code == 6 then
          mark(st, base, op, ts)
        elseif code == 7 then
          local at = op[2] .. '@'
          if ts >= (st[at] or -1e300) then
            st[op[2]] = op[3]
            st[at] = ts
          end
        end
      end
    else
      flags[j] = 0
    end
  end
  if changed then
    blob = cmsgpack.pack(st)
    if pttl > 0 then
      redis.call('SET', key, blob, 'EX', pttl)
    else
      redis.call('SET', key, blob)
    end
  end
  result[i] = {blob or false, redis.call('GET', base .. 's') or false, flags}
end
return result
