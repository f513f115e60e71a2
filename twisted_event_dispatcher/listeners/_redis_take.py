"""
The ``TAKE`` script: what a consumer's reader runs to learn its state and take the mail
only a script may hand it (see :mod:`._redis_attachment`).
"""

from __future__ import annotations

from typing import Final

from ._redis_lua import script

__all__ = ["TAKE"]

#: What a consumer's reader runs after a wake-up, a reconnect, and every ``block`` ms. It
#: reads own mail only for a consumer that is still the listener's and running (so does
#: the push in ``deliver``): a stopped or replaced consumer never takes own mail. It
#: renews the lease, consumes the wake-ups, and (running) hands over at most ``free``
#: mails: its pending own mail the consumer does not hold (given back, a previous
#: consumer's, read for it and not handed over) before new own mail, then (in a group)
#: its group mail the consumer does not hold and mail given back to the group, oldest
#: first; it gives back group mail past its holder's ack deadline.
#: ARGV: R, id, token, lease ms, free, late ("1": look for group mail past its deadline),
#: the listener's registration number when the consumer attached (ATTACH's answer),
#: then four counts and four lists of entry ids: own in flight, own read for it but not
#: handed over, group in flight, group read but not handed over.
#: Returns {"removed"}, {"replaced"} or {"ok", running, group ("" none, or its queue is
#: not a stream), ack, more (1: more to take when a slot is free), late (count given
#: back), own entries, group entries, broken (what another program overwrote, for the
#: log)}; an entry is {id, deliveries, fields}.
TAKE: Final = script(r"""
local id, token, lease, free = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local sets, lists, at = {}, {}, 12
for k = 1, 4 do
  sets[k], lists[k] = {}, {}
  for _ = 1, tonumber(ARGV[7 + k]) do
    sets[k][ARGV[at]] = true
    lists[k][#lists[k] + 1] = ARGV[at]
    at = at + 1
  end
end
local meta = R .. ':l:' .. id
local mailbox = R .. ':mb:' .. id
-- (A record another program overwrote: the listener is lost, as if removed.)
if kind(meta) ~= 'hash' then return {'removed'} end
local state = redis.call('HMGET', meta, 'token', 'running', 'group', 'ack')
local group = state[3] or ''
local queue = R .. ':g:' .. group
-- Consume the wake-ups; own mail carried by entries the reader has not read is not
-- delivered yet (its delivery count stays).
local control = R .. ':c:' .. token
local unread = redis.pcall('XREADGROUP', 'GROUP', 'g', id, 'STREAMS', control, '>')
if type(unread) == 'table' and not unread.err and unread[1] then
  for _, entry in ipairs(unread[1][2]) do
    if entry[2] and entry[2][1] == 'm' and not sets[2][entry[2][2]] then
      sets[2][entry[2][2]] = true
      lists[2][#lists[2] + 1] = entry[2][2]
    end
  end
end
if state[1] ~= token then
  -- Replaced: what it read and did not hand over keeps its delivery count.
  for _, entry in ipairs(lists[2]) do
    local found = pending(mailbox, entry, entry, 1, id)
    if found[1] then
      xclaim(mailbox, id, {entry}, {'RETRYCOUNT', math.max(found[1][4] - 1, 0), 'JUSTID'})
    end
  end
  local back = 0
  for _, entry in ipairs(lists[4]) do
    local found = pending(queue, entry, entry, 1, id)
    if found[1] then
      xclaim(queue, '_orphan', {entry}, {'RETRYCOUNT', math.max(found[1][4] - 1, 0), 'JUSTID'})
      back = back + 1
    end
  end
  if back > 0 then wake_members(group, id) end
  -- Registered again since it attached: not replaced, but removed.
  local number = redis.pcall('ZSCORE', R .. ':L', id)
  if type(number) ~= 'string' or number ~= ARGV[7] then return {'removed'} end
  wake(state[1])
  return {'replaced'}
end
redis.call('SET', R .. ':a:' .. id, token, 'PX', lease)
redis.call('DEL', control)
redis.call('XGROUP', 'CREATE', control, 'g', '$', 'MKSTREAM')
redis.call('PEXPIRE', control, lease)
-- Keys another program overwrote (a string where a stream should be) are left alone and
-- reported: own mail or group mail is not read from them.
local broken = {}
local mine = stream_or_none(mailbox)
if mine then
  ensure_group(mailbox)
else
  broken[#broken + 1] = "the mailbox of listener '" .. id .. "' is a " .. kind(mailbox)
end
if group ~= '' and not stream_or_none(queue) then
  broken[#broken + 1] = "the queue of group '" .. group .. "' is a " .. kind(queue)
  group = ''
end
local running = state[2] == '1'
local own, taken, more, late = {}, {}, 0, 0
if not mine then
  -- (nothing of its own to hand over)
elseif running and free > 0 then
  -- Its pending own mail its consumer does not hold, oldest first (given back, a
  -- previous consumer's, or read for it and not handed over yet), then new mail.
  for _, entry in ipairs(pending(mailbox, '-', '+', free + #lists[1] + 1, id)) do
    if not sets[1][entry[1]] then
      if free == 0 then
        more = 1
        break
      end
      local count = entry[4]
      if not sets[2][entry[1]] then count = count + 1 end
      local got = xclaim(mailbox, id, {entry[1]}, {'RETRYCOUNT', count})
      if type(got[1]) == 'table' and got[1][2] then
        own[#own + 1] = {entry[1], count, got[1][2]}
        free = free - 1
      end
    end
  end
  if free == 0 and more == 0 and redis.call('XLEN', mailbox) > #lists[1] + #own then
    more = 1  -- (its slots went to pending mail: newer mail waits)
  end
  if free > 0 and more == 0 then
    local read = redis.call('XREADGROUP', 'GROUP', 'g', id, 'COUNT', free,
                            'STREAMS', mailbox, '>')
    if read and read[1] then
      local last = nil
      for _, entry in ipairs(read[1][2]) do
        own[#own + 1] = {entry[1], 1, entry[2]}
        last = entry[1]
        free = free - 1
      end
      if free == 0 and #redis.call('XRANGE', mailbox, '(' .. last, '+', 'COUNT', 1) > 0 then
        more = 1
      end
    end
  end
elseif running then
  -- No free slot: is there own mail to take later?
  if redis.call('XLEN', mailbox) > #lists[1] then more = 1 end
end
if group ~= '' then
  ensure_group(queue)
  -- Candidates, in the queue's order: this member's pending group mail its consumer does
  -- not hold (read with a wake-up: not a delivery yet; or a previous consumer's), then
  -- mail given back to the group. {id, deliveries so far, given back already}.
  local candidates, given, back = {}, {}, 0
  for _, entry in ipairs(pending(queue, '-', '+', #lists[3] + #lists[4] + 1000, id)) do
    if not sets[3][entry[1]] then
      local count = entry[4]
      if sets[4][entry[1]] then count = math.max(count - 1, 0) end
      candidates[#candidates + 1] = {entry[1], count, false}
    end
  end
  if running and ARGV[6] == '1' then
    local deadlines, least = {}, nil
    for _, member in ipairs(members(R .. ':m:' .. group)) do
      local seconds = tonumber(fields(R .. ':l:' .. member, 'ack')[1])
      if seconds and seconds > 0 and seconds < 1e9 then  -- (not another program's nan...)
        deadlines[member] = seconds * 1000
        if not least or seconds * 1000 < least then least = seconds * 1000 end
      end
    end
    if least then
      local overdue = redis.pcall('XPENDING', queue, 'g', 'IDLE', math.floor(least),
                                  '-', '+', 1000)
      if type(overdue) == 'table' and not overdue.err then
        local ids = {}
        for _, entry in ipairs(overdue) do
          local holder = entry[2]
          if holder ~= '_orphan' and holder ~= id
             and (not deadlines[holder] or entry[3] >= deadlines[holder]) then
            ids[#ids + 1] = entry[1]
            given[entry[1]] = true
          end
        end
        -- This member's own late mail too (its consumer is slow): to another member.
        for _, entry in ipairs(overdue) do
          if entry[2] == id and sets[3][entry[1]] and deadlines[id]
             and entry[3] >= deadlines[id] then
            ids[#ids + 1] = entry[1]
            given[entry[1]] = true
          end
        end
        if #ids > 0 then
          xclaim(queue, '_orphan', ids, {'JUSTID'})
          late = #ids
          back = back + #ids
        end
      end
    end
  end
  if running and free > 0 then
    -- Mail this script gave back goes to another member first (woken below).
    for _, entry in ipairs(pending(queue, '-', '+', free + late + 1, '_orphan')) do
      if not given[entry[1]] then candidates[#candidates + 1] = {entry[1], entry[4], true} end
    end
  end
  local function order(entry)
    local ms, seq = string.match(entry[1], '^(%d+)-(%d+)$')
    return tonumber(ms) or 0, tonumber(seq) or 0
  end
  table.sort(candidates, function(a, b)
    local ams, aseq = order(a)
    local bms, bseq = order(b)
    return ams < bms or (ams == bms and aseq < bseq)
  end)
  for _, candidate in ipairs(candidates) do
    local key, count = candidate[1], candidate[2]
    local got = {}
    if running and free > 0 then
      got = xclaim(queue, id, {key}, {'RETRYCOUNT', count + 1})
    end
    if type(got[1]) == 'table' and got[1][2] then
      taken[#taken + 1] = {key, count + 1, got[1][2]}
      free = free - 1
    elseif candidate[3] then
      if running then more = 1 end
    else
      xclaim(queue, '_orphan', {key}, {'RETRYCOUNT', count, 'JUSTID'})
      back = back + 1
    end
  end
  if back > 0 then wake_members(group, id) end
end
return {'ok', running and 1 or 0, group, state[4] or '0', more, late, own, taken, broken}
""")
