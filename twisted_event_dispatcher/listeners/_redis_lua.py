"""
Running the Lua scripts of the Redis listener backend (:class:`Script`), and the Lua
functions they share (:data:`PRELUDE`); the key layout is described in
:mod:`._redis_scripts`.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any, Final

from twisted.internet.defer import Deferred

__all__ = ["FUNCTIONS", "PRELUDE", "Script", "script"]


class Script:
    """
    A Lua script: sent whole (``EVAL``, which makes Redis keep it) the first time on a
    connection, then run by its SHA1 (``EVALSHA``); sent whole again if Redis forgot it
    (restarted). So a script's first use costs one round trip too: a script sent just
    before its connection closes still runs.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()
        self._sent: weakref.WeakSet[Any] = weakref.WeakSet()

    def run(self, connection: Any, keys: tuple[str, ...], args: list[str]) -> Deferred[Any]:
        arguments = [str(len(keys)), *keys, *args]
        if connection not in self._sent:
            self._sent.add(connection)
            whole: Deferred[Any] = connection.execute_command("EVAL", self.text, *arguments)
            return whole
        reply: Deferred[Any] = connection.execute_command("EVALSHA", self.sha, *arguments)

        def unknown_script(failure: Any) -> Any:
            if "NOSCRIPT" in failure.getErrorMessage():  # a restarted Redis: send it again
                return connection.execute_command("EVAL", self.text, *arguments)
            return failure

        return reply.addErrback(unknown_script)


#: Shared functions. ``R`` (declared before them): the root of the channel's listener keys.
#: Another program may have written anything under ``R`` (a string where a stream should
#: be, a deleted stream): a Redis error in a script does not undo what it wrote before,
#: so the scripts check a key's type before they use it (:func:`kind`, :func:`fields`),
#: read with ``pcall`` where a wrong type only means "nothing there", and never fail
#: half-way because of one listener's keys.
FUNCTIONS: Final = r"""
local function expired(deadline)
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(deadline)
end
-- The type of the value at key: 'none', 'stream', 'hash', 'zset', 'string'...
local function kind(key)
  local found = redis.call('TYPE', key)
  return found.ok or found
end
-- Whether key holds a stream, or nothing (a stream the scripts may create).
local function stream_or_none(key)
  local found = kind(key)
  return found == 'stream' or found == 'none'
end
-- HMGET key ...: false for each field of a key that is missing or not a hash.
local function fields(key, ...)
  local found = redis.pcall('HMGET', key, ...)
  if type(found) == 'table' and not found.err then return found end
  return {}
end
-- Whether key holds a sorted set, or nothing.
local function zset_or_none(key)
  local found = kind(key)
  return found == 'zset' or found == 'none'
end
-- ZRANGE key 0 -1, or nothing if key is not a sorted set.
local function members(key)
  local found = redis.pcall('ZRANGE', key, 0, -1)
  if type(found) == 'table' and not found.err then return found end
  return {}
end
local function ensure_group(key)
  redis.pcall('XGROUP', 'CREATE', key, 'g', '0', 'MKSTREAM')
end
-- Wake an attached consumer's reader (false: no such reader), unless a wake-up ('w')
-- is the last entry of its control stream already: it makes the reader run TAKE, which
-- sees everything done before it.
local function wake(token)
  if not token or token == '' then return false end
  local control = R .. ':c:' .. token
  if kind(control) ~= 'stream' then return false end
  local last = redis.call('XREVRANGE', control, '+', '-', 'COUNT', 1)[1]
  if not (last and last[2][1] == 'w') then redis.call('XADD', control, '*', 'w', '1') end
  return true
end
-- New mail 'added' in listener id's own mailbox: straight to its consumer's reader ('m'
-- entry: read for it here, so its in-flight count includes it) when it is running, has a
-- free slot and nothing older is queued; else wake it (it runs TAKE).
local function deliver(id, mailbox, added)
  local state = fields(R .. ':l:' .. id, 'token', 'running', 'slots', 'group')
  local token, slots = state[1], tonumber(state[3]) or 0
  if not token or token == '' then return end
  local control = R .. ':c:' .. token
  if state[2] == '1' and slots > 0 and kind(control) == 'stream' then
    local summary = redis.pcall('XPENDING', mailbox, 'g')
    local held = type(summary) == 'table' and not summary.err and tonumber(summary[1])
    if held and redis.call('XLEN', mailbox) - held == 1 then
      if state[4] and state[4] ~= '' then
        local summary = redis.pcall('XPENDING', R .. ':g:' .. state[4], 'g')
        if type(summary) == 'table' and not summary.err and type(summary[4]) == 'table' then
          for _, consumer in ipairs(summary[4]) do
            if consumer[1] == id then held = held + tonumber(consumer[2]) end
          end
        end
      end
      if held < slots then
        local read = redis.pcall('XREADGROUP', 'GROUP', 'g', id, 'COUNT', 1,
                                 'STREAMS', mailbox, '>')
        local entry = type(read) == 'table' and not read.err and read[1] and read[1][2][1]
        if entry and entry[1] == added then
          local command = {'XADD', control, 'MAXLEN', '~', slots + 100, '*', 'm', added}
          for _, value in ipairs(entry[2]) do command[#command + 1] = value end
          redis.call(unpack(command))
          return
        end
      end
    end
  end
  wake(token)
end
local function pending(key, first, last, count, consumer)
  local found = redis.pcall('XPENDING', key, 'g', first, last, count, consumer)
  if type(found) ~= 'table' or found.err then return {} end
  return found
end
local function xclaim(key, consumer, ids, options)
  local claimed = {}
  for i = 1, #ids, 500 do
    local command = {'XCLAIM', key, 'g', consumer, '0'}
    for j = i, math.min(i + 499, #ids) do command[#command + 1] = ids[j] end
    for _, option in ipairs(options) do command[#command + 1] = option end
    for _, got in ipairs(redis.call(unpack(command))) do claimed[#claimed + 1] = got end
  end
  return claimed
end
local function wake_members(group, giver)
  local woken, own = 0, nil
  for _, member in ipairs(members(R .. ':m:' .. group)) do
    local state = fields(R .. ':l:' .. member, 'token', 'running')
    if state[1] and state[1] ~= '' and state[2] == '1' then
      if member == giver then
        own = state[1]
      elseif wake(state[1]) then
        woken = woken + 1
      end
    end
  end
  if woken == 0 and own then wake(own) end
end
local function give_back(group, member)
  local key = R .. ':g:' .. group
  local ids = {}
  for _, entry in ipairs(pending(key, '-', '+', 100000, member)) do ids[#ids + 1] = entry[1] end
  if #ids > 0 then
    xclaim(key, '_orphan', ids, {'JUSTID'})
    wake_members(group, member)
  end
  return #ids
end
"""

#: What most scripts start with: ``R`` is ``ARGV[1]``.
PRELUDE: Final = "local R = ARGV[1]\n" + FUNCTIONS


def script(body: str) -> Script:
    """A script that starts with :data:`PRELUDE` (``ARGV[1]``: the root ``R``)."""
    return Script(PRELUDE + body)
