-- Atomic, idempotent batch update of customer profiles.
--
-- KEYS[i]  key of customer i ("<prefix>:{<customer_id>}:p"). Its value holds the profile
--          and the scoring state (see CUSTOMER VALUE below).
-- ARGV[1]  msgpack config: taus (decayed field -> tau seconds), maxcat, icap (lane ->
--          event ids kept), scap (sessions kept), lcap (cart/order links kept), lwin
--          (link window, s), lttl (link wall-clock TTL, s), swin (how recent the last
--          session must be for an order without one, s), pttl (profile TTL, 0 = none),
--          pfmt (profile format), fields (the stored profile's fields, in order)
-- ARGV[2]  msgpack list, one entry per KEYS[i]: list of {event_digest (6 bytes), ts, ops,
--          lane}
-- ARGV[3]  the client's wall clock, whole seconds (link expiry; passed in so both
--          interpreters see the same clock)
--
-- The op codes and their meaning mirror streamproc/core/features.py:apply_event;
-- the id, session and link rings mirror streamproc/core/seen.py. Tests run the same
-- streams through both and compare bytes. This file holds no business rules:
-- which ops an event produces is decided in Python.
--
-- Returns, per customer: {profile_blob, output_state_blob|false,
--                         {1 applied | 0 duplicate | 2 late, per event},
--                         cart/order links a full link ring cost (seen.touch_link)}.
--
-- CUSTOMER VALUE: "\193" (0xc1, a byte msgpack never uses, so a bare profile is never
-- mistaken for it), the profile's length (4 bytes, big-endian), the profile (msgpack),
-- then the scoring state exactly as the scorer wrote it (msgpack; empty if none yet).
-- One key per customer instead of two saves a key's overhead (~100 B) per customer.
-- streamproc/adapters/redis_store.py (split_value) and scoring_write.lua read it too.
--
-- PROFILE: a msgpack array {pfmt, value of fields[1], value of fields[2], ...}, false for
-- an absent field (cmsgpack packs a table with nil holes as a map), absent fields at the
-- end left out; no field names stored (features.STORED_FIELDS, features.profile_row).
-- Anything else (not an array, a format other than pfmt, more fields than this version
-- knows: a newer version's profile) and a field without a slot raise an error rather
-- than lose a field: nothing is written, and the worker retries.

local cfg = cmsgpack.unpack(ARGV[1])
local groups = cmsgpack.unpack(ARGV[2])
local now = tonumber(ARGV[3])
local taus, maxcat, icap, scap, pttl = cfg.taus, cfg.maxcat, cfg.icap, cfg.scap, cfg.pttl
local lcap, lwin, lttl, swin = cfg.lcap, cfg.lwin, cfg.lttl, cfg.swin
local pfmt, fields = cfg.pfmt, cfg.fields
local slot = {}
for i, name in ipairs(fields) do slot[name] = i end
local exp, mfloor, find, sub, byte = math.exp, math.floor, string.find, string.sub, string.byte
local IDKEY, IDREC, SESREC, LINKREC = 6, 12, 9, 17
local CART, ORDER = 2, 4
local U32 = 4294967295

-- Byte position (1-based) of the record of `size` bytes that starts with `key`, or nil.
local function find_record(ring, key, size)
  local at = find(ring, key, 1, true)
  while at do
    if (at - 1) % size == 0 then return at end
    at = find(ring, key, at + 1, true)
  end
  return nil
end

-- seen._insert_id: inserts a record in event-time order, evicting the oldest on overflow
-- (raising st[lane..'f']); stores and returns the ring.
local function insert_id(st, lane, ring, key, ms)
  local at = #ring
  while at > 0 and struct.unpack('>I6', ring, at - 5) > ms do at = at - IDREC end
  ring = sub(ring, 1, at) .. key .. struct.pack('>I6', ms) .. sub(ring, at + 1)
  if #ring > icap[lane] * IDREC then
    local evicted = struct.unpack('>I6', ring, IDKEY + 1)
    local fl = st[lane .. 'f']
    if fl == nil or evicted > fl then st[lane .. 'f'] = evicted end
    ring = sub(ring, IDREC + 1)
  end
  st[lane] = ring
  return ring
end

-- seen.admit_event: returns 1 applied, 0 duplicate, 2 late; updates st[lane], st[lane..'f'].
local function admit(st, lane, key, ts)
  local ring = st[lane] or ''
  if find_record(ring, key, IDREC) then return 0 end
  local ms = mfloor(ts * 1000 + 0.5)
  if ms < 0 then ms = 0 elseif ms > 281474976710655 then ms = 281474976710655 end
  local fl = st[lane .. 'f']
  if fl ~= nil and ms <= fl then return 2 end
  insert_id(st, lane, ring, key, ms)
  return 1
end

-- seen.touch_session: returns the session's flags before, makes it the most recent.
local function touch_session(st, key, flag)
  local ring = st.ss or ''
  local at = find_record(ring, key, SESREC)
  local before = 0
  if at then
    before = string.byte(ring, at + 8)
    ring = sub(ring, 1, at - 1) .. sub(ring, at + SESREC)
  end
  ring = ring .. key .. string.char(bit.bor(before, flag))
  if #ring > scap * SESREC then ring = sub(ring, SESREC + 1) end
  st.ss = ring
  return before
end

local function u32(v)
  v = mfloor(v)
  if v < 0 then return 0 elseif v > U32 then return U32 end
  return v
end

local function newest_ms(ring)
  if ring == nil or #ring == 0 then return nil end
  return struct.unpack('>I6', ring, #ring - 5)
end

-- seen._done: the topic has moved `lwin` past a link (no event of its session can follow).
local function done(topic_ms, rec_t)
  return topic_ms ~= nil and mfloor(topic_ms / 1000) - lwin > rec_t
end

-- seen.touch_link: drops the links that can go without loss, then sets `flag` on the
-- session's link; returns the session's flags before (nil: not linked, count nothing)
-- and the links a full ring cost (0 or 1).
local function touch_link(st, key, flag, ts)
  local clicks, orders = newest_ms(st.jc), newest_ms(st.jp)
  local ring = st.lk or ''
  local kept, before, t, expiry = {}, 0, u32(ts), u32(now + lttl)
  for at = 1, #ring, LINKREC do
    local rec = sub(ring, at, at + LINKREC - 1)
    local flags = byte(rec, 9)
    local rec_t, rec_exp = struct.unpack('>I4>I4', rec, 10)
    local gone
    if bit.band(flags, ORDER) ~= 0 then
      gone = done(orders, rec_t) and (bit.band(flags, CART) ~= 0 or done(clicks, rec_t)
                                      or rec_exp <= now)
    else
      gone = done(orders, rec_t) or rec_exp <= now
    end
    if not gone then
      if sub(rec, 1, 8) == key then
        before = flags
        if rec_t > t then t = rec_t end
        if rec_exp > expiry then expiry = rec_exp end
      else
        kept[#kept + 1] = rec
      end
    end
  end
  local at = #kept
  while at > 0 and struct.unpack('>I4', kept[at], 10) > t do at = at - 1 end
  local new = key .. string.char(bit.bor(before, flag)) .. struct.pack('>I4>I4', t, expiry)
  table.insert(kept, at + 1, new)
  local dropped = 0
  if #kept > lcap then
    -- The oldest link no count depends on goes; the new one if there is none.
    local victim = at + 1
    for n, rec in ipairs(kept) do
      if bit.band(byte(rec, 9), ORDER) == 0 or done(orders, struct.unpack('>I4', rec, 10)) then
        victim = n
        break
      end
    end
    table.remove(kept, victim)
    if victim == at + 1 then before = nil end
    dropped = 1
  end
  st.lk = table.concat(kept)
  return before, dropped
end

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

-- Byte-wise a < b, as Python compares str: Lua's `<` on strings uses strcoll, which
-- orders mixed-case names differently under a UTF-8 locale. Only used to break ties.
local function bytes_lt(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function category_add(st, cat, weight)
  local cats = st.k
  if type(cats) ~= 'table' then cats = {}; st.k = cats end
  if cats[cat] ~= nil then cats[cat] = cats[cat] + weight; return end
  local n, weakest, floor = 0, nil, nil
  for name, w in pairs(cats) do
    n = n + 1
    if floor == nil or w < floor or (w == floor and bytes_lt(name, weakest)) then
      weakest, floor = name, w
    end
  end
  if n < maxcat then cats[cat] = weight; return end
  cats[weakest] = nil
  cats[cat] = floor + weight
end

-- features._session_key: an empty session is the last one, if recent enough.
local function session_key(st, key, ts)
  if key ~= '' then return key end
  key = st.lsd
  if key == nil or ts - (st['ls@'] or -1e300) > swin then return nil end
  return key
end

-- features._count_session: counts of one topic, read in order, from a ring of recent sessions.
local function count_session(st, op, ts)
  local key, flag, field, value = session_key(st, op[2], ts), op[3], op[4], op[5]
  if key == nil then return end
  if bit.band(touch_session(st, key, flag), flag) == 0 then
    st[field] = (st[field] or 0) + value
  end
end

-- features._link: cart/order links join the two topics; returns the links a full ring cost.
local function link(st, op, ts)
  local key, flag, field, value, other, ofield, ovalue = session_key(st, op[2], ts), op[3],
    op[4], op[5], op[6], op[7], op[8]
  if key == nil then return 0 end
  local before, dropped = touch_link(st, key, flag, ts)
  if before ~= nil and bit.band(before, flag) == 0 then
    if field ~= '' then st[field] = (st[field] or 0) + value end
    if bit.band(before, other) ~= 0 then st[ofield] = (st[ofield] or 0) + ovalue end
  end
  return dropped
end

-- features.profile_from_row: the profile table of a stored array.
local function load_profile(key, blob)
  local head = byte(blob, 1)
  -- Told apart by the msgpack header (fixarray, array 16/32): cmsgpack unpacks a map with
  -- integer keys to the same table as an array.
  if not ((head >= 0x90 and head <= 0x9f) or head == 0xdc or head == 0xdd) then
    error('profile is not an array of format ' .. pfmt .. ': ' .. key)
  end
  local row = cmsgpack.unpack(blob)
  if row[1] ~= pfmt then
    error('profile format ' .. tostring(row[1]) .. ' unknown to this version: ' .. key)
  end
  if table.maxn(row) > #fields + 1 then
    error('profile written by a newer version (more fields than this one knows): ' .. key)
  end
  local st = {}
  for j, name in ipairs(fields) do
    local v = row[j + 1]
    if v ~= false then st[name] = v end
  end
  return st
end

-- features.profile_row: the array written for a profile table.
local function save_profile(key, st)
  for name in pairs(st) do
    if slot[name] == nil then
      error('profile field ' .. tostring(name) .. ' has no stored position: ' .. key)
    end
  end
  local row, n = {pfmt}, #fields + 1
  for j, name in ipairs(fields) do
    local v = st[name]
    if v == nil then v = false end
    row[j + 1] = v
  end
  while n > 1 and row[n] == false do
    row[n] = nil
    n = n - 1
  end
  return cmsgpack.pack(row)
end

local result, writes = {}, {}
for i, key in ipairs(KEYS) do
  local blob = redis.call('GET', key)
  local out = false
  if blob and string.byte(blob, 1) == 193 then
    local n = struct.unpack('>I4', blob, 2)
    if #blob > 5 + n then out = sub(blob, 6 + n) end
    blob = n > 0 and sub(blob, 6, 5 + n) or false
  end
  local st, changed, dropped = {}, false, 0
  if blob then st = load_profile(key, blob) end
  local flags = {}
  for j, ev in ipairs(groups[i]) do
    local ts, ops = ev[2], ev[3]
    local status = admit(st, ev[4], ev[1], ts)
    flags[j] = status
    if status == 1 then
      changed = true
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
          count_session(st, op, ts)
        elseif code == 7 then
          local at = op[2] .. '@'
          if ts >= (st[at] or -1e300) then
            st[op[2]] = op[3]
            st[at] = ts
            if op[4] ~= nil then st[op[4]] = op[5] end
          end
        elseif code == 8 then
          dropped = dropped + link(st, op, ts)
        end
      end
    end
  end
  if changed then
    blob = save_profile(key, st)
    writes[#writes + 1] = {key, '\193' .. struct.pack('>I4', #blob) .. blob .. (out or '')}
  end
  result[i] = {blob or false, out, flags, dropped}
end
-- Written once every profile of the batch is packed: a profile this version cannot
-- store fails the call before anything changed (a script's writes are not undone).
for _, w in ipairs(writes) do
  if pttl > 0 then
    redis.call('SET', w[1], w[2], 'EX', pttl)
  else
    redis.call('SET', w[1], w[2])
  end
end
return result
