"""
The Lua scripts of the Redis listener backend that change a listener's state (register,
remove, start/stop, attach/detach, broadcast) or read it: every change is one script, so
it is atomic across processes. The frequent operations are in :mod:`._redis_batch`, the
reader's in :mod:`._redis_take`, the shared functions in :mod:`._redis_lua`.

Keys, under the root ``R`` of a channel's listeners (``ARGV[1]``; see
:class:`~._redis_entries.Keys`):

* ``R:L`` sorted set: listener id, scored by registration order; ``R:seq`` its counter.
* ``R:l:<id>`` hash: ``group`` (``""``: none), ``size``, ``ack`` (seconds), ``running``
  (``1``/``0``), ``token`` (the attached consumer, ``""``: none) and its ``slots``
  (``max_in_flight``).
* ``R:mb:<id>`` stream: the listener's own mailbox, consumer group ``g``, consumer ``<id>``.
  Acknowledged entries are deleted, so ``XLEN`` is queued + in flight.
* ``R:g:<group>`` stream: the group's queue, consumer group ``g``; each member reads as
  consumer ``<id>``. Mail given back to the group (released, its member stopped, removed
  or detached, its ack deadline passed) is claimed by the consumer ``_orphan`` (a name no
  listener can have) and taken from there, oldest first, before new mail.
  ``R:m:<group>`` sorted set: its members.
* ``R:a:<id>`` string: the attached consumer's token, with a lease (``attached``).
* ``R:c:<token>`` stream: one attached consumer's control stream (consumer group ``g``),
  which its reader blocks on: a ``w`` entry wakes it (stopped, started, removed, replaced,
  mail given back to its group, new mail it must take itself), an ``m`` entry carries a
  new own mail already read for it (it was running, with a free slot, and nothing older
  was queued): one round trip from dispatch to consumer.

Delivery counts are the pending entries' counts, set explicitly (``RETRYCOUNT``) where
Redis' own count would be wrong: mail read for a consumer but not handed over to it keeps
its count when it is handed over later, or to another consumer.

Errors are answered with a first word the Python side maps to an exception:
``EXPIRED`` (reached Redis after its deadline: nothing was changed), ``UNKNOWNLISTENER``,
``UNKNOWNGROUP``, ``LISTENEREXISTS``, ``MAILBOXFULL <limit>``, ``CORRUPT``.
"""

from __future__ import annotations

from typing import Final

from ..channels._redis_stream import PUBLISH_SCRIPT
from ._redis_lua import FUNCTIONS, Script, script

__all__ = ["ATTACH", "BROADCAST", "DETACH", "INFO", "REGISTER", "REMOVE", "SET_RUNNING"]


#: ARGV: R, deadline, id, group ("" none), size, ack seconds. Returns the id.
REGISTER: Final = script(r"""
if expired(ARGV[2]) then return redis.error_reply('EXPIRED') end
local id, group = ARGV[3], ARGV[4]
local meta = R .. ':l:' .. id
if redis.call('EXISTS', meta) == 1 then return redis.error_reply('LISTENEREXISTS') end
if not zset_or_none(R .. ':L') or (group ~= '' and not zset_or_none(R .. ':m:' .. group)) then
  return redis.error_reply('CORRUPT the listener index, or the members of group ' .. group ..
                           ', are not a sorted set (another program wrote them?)')
end
local seq = redis.call('INCR', R .. ':seq')
redis.call('HSET', meta, 'group', group, 'size', ARGV[5], 'ack', ARGV[6], 'running', '1',
           'token', '')
redis.call('ZADD', R .. ':L', seq, id)
local mailbox = R .. ':mb:' .. id
redis.call('DEL', mailbox, R .. ':a:' .. id)
redis.call('XGROUP', 'CREATE', mailbox, 'g', '0', 'MKSTREAM')
if group ~= '' then
  redis.call('ZADD', R .. ':m:' .. group, seq, id)
  ensure_group(R .. ':g:' .. group)
end
return id
""")

#: ARGV: R, deadline, id. Discards the mailbox, gives its group mail back.
REMOVE: Final = script(r"""
if expired(ARGV[2]) then return redis.error_reply('EXPIRED') end
local id = ARGV[3]
local meta = R .. ':l:' .. id
if redis.call('EXISTS', meta) == 0 then return redis.error_reply('UNKNOWNLISTENER') end
-- (A record another program overwrote is removed all the same.)
local state = fields(meta, 'group', 'token')
local group = state[1]
local index = R .. ':m:' .. (group or '')
if not zset_or_none(R .. ':L') or (group and group ~= '' and not zset_or_none(index)) then
  return redis.error_reply('CORRUPT the listener index, or the members of group ' ..
                           (group or '') .. ', are not a sorted set (another program wrote them?)')
end
redis.call('DEL', meta, R .. ':mb:' .. id, R .. ':a:' .. id)
redis.call('ZREM', R .. ':L', id)
wake(state[2])
if group and group ~= '' then
  redis.call('ZREM', index, id)
  local queue = R .. ':g:' .. group
  give_back(group, id)
  redis.pcall('XGROUP', 'DELCONSUMER', queue, 'g', id)
  if redis.call('ZCARD', index) == 0 and kind(queue) == 'stream'
     and redis.call('XLEN', queue) == 0 then
    redis.call('DEL', queue)
  end
end
return 1
""")

#: ARGV: R, deadline, id, "1" or "0".
SET_RUNNING: Final = script(r"""
if expired(ARGV[2]) then return redis.error_reply('EXPIRED') end
local id = ARGV[3]
local meta = R .. ':l:' .. id
local found = kind(meta)
if found == 'none' then return redis.error_reply('UNKNOWNLISTENER') end
if found ~= 'hash' then
  return redis.error_reply('CORRUPT the record of listener ' .. id .. ' is a ' .. found)
end
local state = redis.call('HMGET', meta, 'group', 'token', 'running')
if state[3] == ARGV[4] then return 0 end
redis.call('HSET', meta, 'running', ARGV[4])
if ARGV[4] == '0' and state[1] and state[1] ~= '' then give_back(state[1], id) end
wake(state[2])
return 1
""")

#: ARGV: R, deadline, id, token, lease ms, max in flight. Returns the listener's
#: registration number (its score in ``R:L``: TAKE tells a consumer of a listener removed
#: and registered again from one replaced by another consumer). Past its deadline it
#: changes nothing: an attach given up on (Redis hung) must not replace the consumer
#: attached meanwhile by one that does not exist.
ATTACH: Final = script(r"""
if expired(ARGV[2]) then return redis.error_reply('EXPIRED') end
local id, token = ARGV[3], ARGV[4]
local meta = R .. ':l:' .. id
local found = kind(meta)
if found == 'none' then return redis.error_reply('UNKNOWNLISTENER') end
if found ~= 'hash' then
  return redis.error_reply('CORRUPT the record of listener ' .. id .. ' is a ' .. found)
end
local old = redis.call('HGET', meta, 'token') or ''
if old ~= token then wake(old) end
redis.call('HSET', meta, 'token', token, 'slots', ARGV[6])
redis.call('SET', R .. ':a:' .. id, token, 'PX', ARGV[5])
local control = R .. ':c:' .. token
redis.call('DEL', control)
redis.call('XGROUP', 'CREATE', control, 'g', '$', 'MKSTREAM')
redis.call('PEXPIRE', control, ARGV[5])
ensure_group(R .. ':mb:' .. id)
local number = redis.pcall('ZSCORE', R .. ':L', id)
if type(number) ~= 'string' then return '' end
return number
""")

#: ARGV: R, id, token, then the own mail read for it but not handed over (it keeps its
#: delivery count; so does own mail a dispatch read for it into its control stream that
#: its reader had not read yet). Own mail stays pending: the next consumer gets it first.
DETACH: Final = script(r"""
local id, token = ARGV[2], ARGV[3]
local meta = R .. ':l:' .. id
local state = fields(meta, 'token', 'group')
if state[1] ~= token then return 0 end
local unread = {}
for i = 4, #ARGV do unread[#unread + 1] = ARGV[i] end
local control = R .. ':c:' .. token
local pushed = redis.pcall('XREADGROUP', 'GROUP', 'g', id, 'STREAMS', control, '>')
if type(pushed) == 'table' and not pushed.err and pushed[1] then
  for _, entry in ipairs(pushed[1][2]) do
    if entry[2] and entry[2][1] == 'm' then unread[#unread + 1] = entry[2][2] end
  end
end
redis.call('HSET', meta, 'token', '', 'slots', '0')
redis.call('DEL', R .. ':a:' .. id, control)
local mailbox = R .. ':mb:' .. id
for _, entry in ipairs(unread) do
  local found = pending(mailbox, entry, entry, 1, id)
  if found[1] then
    xclaim(mailbox, id, {entry}, {'RETRYCOUNT', math.max(found[1][4] - 1, 0), 'JUSTID'})
  end
end
if state[2] and state[2] ~= '' then give_back(state[2], id) end
return 1
""")

#: ARGV: R, id. Returns group, running, size, ack, XLEN, own pending, group pending,
#: attached; or 0 for an unknown listener.
INFO: Final = script(r"""
local id = ARGV[2]
local meta = R .. ':l:' .. id
local found = kind(meta)
if found == 'none' then return 0 end
if found ~= 'hash' then
  return redis.error_reply('CORRUPT the record of listener ' .. id .. ' is a ' .. found)
end
local state = redis.call('HMGET', meta, 'group', 'running', 'size', 'ack')
local mailbox = R .. ':mb:' .. id
local length = 0
if kind(mailbox) == 'stream' then length = redis.call('XLEN', mailbox) end
local own = 0
local summary = redis.pcall('XPENDING', mailbox, 'g')
if type(summary) == 'table' and not summary.err then own = tonumber(summary[1]) end
local taken = 0
if state[1] and state[1] ~= '' then
  summary = redis.pcall('XPENDING', R .. ':g:' .. state[1], 'g')
  if type(summary) == 'table' and not summary.err and type(summary[4]) == 'table' then
    for _, consumer in ipairs(summary[4]) do
      if consumer[1] == id then taken = tonumber(consumer[2]) end
    end
  end
end
return {state[1] or '', state[2] or '0', state[3] or '0', state[4] or '0',
        length, own, taken, redis.call('EXISTS', R .. ':a:' .. id)}
""")

#: The channel's publish script for one message, then a copy into every listener's
#: mailbox (or a ``_missed`` notice at the tail of a full one). KEYS: the channel's
#: stream, epoch and offset counter, then ``R:L``. ARGV: as the publish script. Returns
#: the epoch, the offset, then the ids of the listeners skipped because their keys are
#: not what the scripts wrote (another program's: a record that is not a hash, a
#: mailbox that is not a stream); a deleted mailbox is made again.
_COPY = r"""
local offset = offsets[2]
local skipped = {}
-- (XADD can still fail: another program's entry with the highest possible id.)
local function copy(id, mailbox, ...)
  local added = redis.pcall('XADD', mailbox, '*', ...)
  if type(added) == 'string' then deliver(id, mailbox, added) else skipped[#skipped + 1] = id end
end
for _, id in ipairs(members(KEYS[4])) do
  local size = tonumber(fields(R .. ':l:' .. id, 'size')[1])
  local mailbox = R .. ':mb:' .. id
  local box = kind(mailbox)
  if not size or (box ~= 'stream' and box ~= 'none') then
    skipped[#skipped + 1] = id
  else
    if box == 'none' then ensure_group(mailbox) end
    if redis.call('XLEN', mailbox) < size then
      copy(id, mailbox, 'e', ARGV[4], 'd', ARGV[5], 's', 'b', 'o', offset)
    else
      local count = 1
      local tail = redis.call('XREVRANGE', mailbox, '+', '-', 'COUNT', 1)[1]
      if tail then
        local source, missed = nil, nil
        for i = 1, #tail[2], 2 do
          if tail[2][i] == 's' then source = tail[2][i + 1] end
          if tail[2][i] == 'n' then missed = tonumber(tail[2][i + 1]) end
        end
        if source == 'm' and missed and missed >= 1 and missed < 1e15 then
          local taken = redis.pcall('XPENDING', mailbox, 'g', tail[1], tail[1], 1)
          if type(taken) == 'table' and not taken.err and #taken == 0 then
            count = math.floor(missed) + 1
            redis.call('XDEL', mailbox, tail[1])
          end
        end
      end
      copy(id, mailbox, 'e', '_missed', 'd', '{"count":' .. count .. ',"reason":"mailbox full"}',
           's', 'm', 'n', count)
    end
  end
end
for _, id in ipairs(skipped) do offsets[#offsets + 1] = id end
return offsets
"""

#: Before the publish: a listener index another program overwrote refuses the broadcast
#: (nothing published), rather than publishing it to no listener.
_CHECK = r"""
if not zset_or_none(KEYS[4]) then
  return redis.error_reply('CORRUPT the listener index ' .. KEYS[4] .. ' is a ' ..
                           kind(KEYS[4]) .. ', not a sorted set (another program wrote it?)')
end
"""


def _broadcast_script() -> Script:
    publish = PUBLISH_SCRIPT.rstrip()
    tail = "return offsets"
    if not publish.endswith(tail):  # pragma: no cover - the publish script changed shape
        raise RuntimeError("the channel's publish script no longer ends with 'return offsets'")
    root = "local R = string.sub(KEYS[4], 1, -3)\n"
    return Script(root + FUNCTIONS + _CHECK + publish[: -len(tail)] + _COPY)


BROADCAST: Final = _broadcast_script()

