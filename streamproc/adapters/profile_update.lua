-- Atomic, idempotent batch update of customer profiles.
--
-- KEYS[i]  key of customer i ("<prefix>:{<customer_id>}:p"). Its value holds the profile
--          and the scoring state (see CUSTOMER VALUE below).
-- ARGV[1]  msgpack config: taus (decayed field -> tau seconds), maxcat, icap (lane ->
--          event ids kept), scap (sessions kept), lcap (cart/order links kept), lwin
--          (link window, s), lttl (link wall-clock TTL, s), pttl (profile TTL, 0 = none),
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
-- Event-id rings of earlier versions (ic/ip, 8-byte digests, 14-byte records) are
-- converted to the current lanes (jc/jp, 6-byte digests, 12-byte records) when a profile
-- is loaded, and the profile is written back even if every event was a duplicate.
--
-- Returns, per customer: {profile_blob, output_state_blob|false,
--                         {1 applied | 0 duplicate | 2 late, per event}}.
--
-- CUSTOMER VALUE: "\193" (0xc1, a byte msgpack never uses, so a bare profile is never
-- mistaken for it), the profile's length (4 bytes, big-endian), the profile (msgpack),
-- then the scoring state exactly as the scorer wrote it (msgpack; empty if none yet).
-- One key per customer instead of two saves a key's overhead (~100 B) per customer.
-- streamproc/adapters/redis_store.py (split_value) and scoring_write.lua read it too.
--
-- PROFILE: a msgpack array {pfmt, value of fields[1], value of fields[2], ...}, false for
-- an absent field (cmsgpack packs a table with nil holes as a map), absent fields at the
-- end left out; no field names stored (features.STORED_FIELDS, features.profile_row). A
-- profile of earlier versions is a map: it is read as is and rewritten as an array by
-- this update, even if every event was a duplicate. A field without a slot, a format
-- other than pfmt, or more fields than this version knows (a newer version's profile)
-- raise an error rather than lose a field: nothing is written, and the worker retries.

local cfg = cmsgpack.unpack(ARGV[1])
local groups = cmsgpack.unpack(ARGV[2])
local now = tonumber(ARGV[3])
local taus, maxcat, icap, scap, pttl = cfg.taus, cfg.maxcat, cfg.icap, cfg.scap, cfg.pttl
local lcap, lwin, lttl = cfg.lcap, cfg.lwin, cfg.lttl
local pfmt, fields = cfg.pfmt, cfg.fields
local slot = {}
for i, name in ipairs(fields) do slot[name] = i end
local exp, mfloor, find, sub = math.exp, math.floor, string.find, string.sub
local window = 4 * 3600
local IDKEY, IDREC, OLDREC, SESREC, LINKREC = 6, 12, 14, 9, 17
-- features.LEGACY_LANES: id rings of earlier versions (14-byte records) -> current lanes.
local LEGACY = {{'ic', 'jc'}, {'ip', 'jp'}}
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

-- seen.upgrade_id_ring / features.upgrade_lanes: folds each legacy ring into its lane
-- (digest bytes 7-8 dropped, event-time order, newer floor wins); true if any.
local function upgrade_lanes(st)
  local changed = false
  for _, names in ipairs(LEGACY) do
    local old, lane = names[1], names[2]
    local ring, ofl = st[old], st[old .. 'f']
    if ring ~= nil or ofl ~= nil then
      ring = ring or ''
      local fl = st[lane .. 'f']
      if ofl ~= nil and (fl == nil or ofl > fl) then st[lane .. 'f'] = ofl end
      local new = st[lane] or ''
      for at = 1, #ring - OLDREC + 1, OLDREC do
        local key = sub(ring, at, at + IDKEY - 1)
        if not find_record(new, key, IDREC) then
          new = insert_id(st, lane, new, key, (struct.unpack('>I6', ring, at + OLDREC - 6)))
        end
      end
      if #new > 0 then st[lane] = new end
      st[old], st[old .. 'f'] = nil, nil
      changed = true
    end
  end
  return changed
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

-- seen.touch_link: drops settled and expired links, then sets `flag` on the session's
-- link; returns the session's flags before.
local function touch_link(st, key, flag, ts)
  local clicks, orders = newest_ms(st.jc), newest_ms(st.jp)
  local low = nil
  if clicks ~= nil and orders ~= nil then
    low = mfloor(math.min(clicks, orders) / 1000) - lwin
  end
  local ring = st.lk or ''
  local kept, before, t, expiry = {}, 0, u32(ts), u32(now + lttl)
  for at = 1, #ring, LINKREC do
    local rec = sub(ring, at, at + LINKREC - 1)
    local rec_t, rec_exp = struct.unpack('>I4>I4', rec, 10)
    if rec_exp > now and (low == nil or rec_t >= low) then
      if sub(rec, 1, 8) == key then
        before = string.byte(rec, 9)
        if rec_t > t then t = rec_t end
        if rec_exp > expiry then expiry = rec_exp end
      else
        kept[#kept + 1] = rec
      end
    end
  end
  local at = #kept
  while at > 0 and struct.unpack('>I4', kept[at], 10) > t do at = at - 1 end
  table.insert(kept, at + 1, key .. string.char(bit.bor(before, flag)) ..
    struct.pack('>I4>I4', t, expiry))
  if #kept > lcap then table.remove(kept, 1) end
  st.lk = table.concat(kept)
  return before
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

local function mark(st, op, ts)
  local key, flag, field, value, other, ofield, ovalue = op[2], op[3], op[4], op[5], op[6],
    op[7], op[8]
  if key == '' then
    key = st.lsd
    if key == nil or ts - (st['ls@'] or -1e300) > window then return end
  end
  if flag == 1 then
    -- Session counting reads one topic, in order: a small ring of recent sessions is exact.
    local before = touch_session(st, key, flag)
    if bit.band(before, flag) == 0 then st[field] = (st[field] or 0) + value end
    return
  end
  -- Cart/order links join the two topics: kept until both have moved past them.
  local before = touch_link(st, key, flag, ts)
  if bit.band(before, flag) == 0 then
    st[field] = (st[field] or 0) + value
    if bit.band(before, other) ~= 0 then st[ofield] = (st[ofield] or 0) + ovalue end
  end
end

-- features.profile_from_row, and earlier versions' maps: returns the profile table and
-- whether it was a map (to be rewritten as an array).
local function load_profile(key, blob)
  local row = cmsgpack.unpack(blob)
  local head = string.byte(blob, 1)
  -- Told apart by the msgpack header (fixarray, array 16/32), not by the table: an older
  -- worker that wrote to an array profile left a map with integer keys, refused on save.
  if not ((head >= 0x90 and head <= 0x9f) or head == 0xdc or head == 0xdd) then
    return row, true
  end
  if next(row) == nil then return row, true end  -- an empty table packs as an empty array
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
  return st, false
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
  local st, changed = {}, false
  if blob then st, changed = load_profile(key, blob) end
  local flags = {}
  -- Converted whatever the events' outcome, as the Python twin does (features.apply_event).
  if upgrade_lanes(st) then changed = true end
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
          mark(st, op, ts)
        elseif code == 7 then
          local at = op[2] .. '@'
          if ts >= (st[at] or -1e300) then
            st[op[2]] = op[3]
            st[at] = ts
            if op[4] ~= nil then st[op[4]] = op[5] end
          end
        end
      end
    end
  end
  if changed then
    blob = save_profile(key, st)
    writes[#writes + 1] = {key, '\193' .. struct.pack('>I4', #blob) .. blob .. (out or '')}
  end
  result[i] = {blob or false, out, flags}
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
