"""
The frequent operations of the Redis listener backend (put, put to a group, acknowledge,
give back, reply), sent as one script call per reactor turn: a consumer that finishes a
batch of mail in one turn acknowledges (or answers) all of it in one round trip, and a
process that dispatches many mails in one turn stores them in one.

Each operation is one Lua function of the ``BATCH`` script; the call runs them in the
order they were made and answers one string per operation: ``+<result>``, or
``-<REFUSAL> <details>`` (see :mod:`._redis_scripts` for the words).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from ._redis_commands import DEADLINE, Argument
from ._redis_lua import script

if TYPE_CHECKING:
    from ._redis_mailboxes import RedisMailboxes

__all__ = ["BATCH", "Batch"]

#: ARGV: R, deadline, then per operation: its name, its argument count, its arguments.
BATCH: Final = script(r"""
local late = expired(ARGV[2])

-- id, event, data, reply_to ("" none), correlation -> the mail id
local function put(a)
  if late then return '-EXPIRED' end
  local id = a[1]
  local meta = R .. ':l:' .. id
  local found = kind(meta)
  if found == 'none' then return '-UNKNOWNLISTENER' end
  if found ~= 'hash' then
    return "-CORRUPT the record of listener '" .. id .. "' is a " .. found
  end
  local size = tonumber(redis.call('HGET', meta, 'size'))
  if not size then return "-CORRUPT listener '" .. id .. "' has no size" end
  local mailbox = R .. ':mb:' .. id
  local box = kind(mailbox)
  if box == 'none' then
    ensure_group(mailbox)  -- (deleted by another program: made again)
  elseif box ~= 'stream' then
    return "-CORRUPT the mailbox of listener '" .. id .. "' is a " .. box
  end
  if redis.call('XLEN', mailbox) >= size then return '-MAILBOXFULL ' .. size end
  local added
  if a[4] ~= '' then
    added = redis.call('XADD', mailbox, '*', 'e', a[2], 'd', a[3], 's', 'd', 'r', a[4], 'c', a[5])
  else
    added = redis.call('XADD', mailbox, '*', 'e', a[2], 'd', a[3], 's', 'd')
  end
  deliver(id, mailbox, added)
  return '+' .. added
end

-- group, group_size, event, data, reply_to ("" none), correlation -> the mail id
local function put_group(a)
  if late then return '-EXPIRED' end
  local group = a[1]
  local index = R .. ':m:' .. group
  if not zset_or_none(index) then
    return "-CORRUPT the members of group '" .. group .. "' are a " .. kind(index)
  end
  if redis.call('ZCARD', index) == 0 then return '-UNKNOWNGROUP' end
  local queue = R .. ':g:' .. group
  if not stream_or_none(queue) then
    return "-CORRUPT the queue of group '" .. group .. "' is a " .. kind(queue)
  end
  ensure_group(queue)
  local summary = redis.call('XPENDING', queue, 'g')
  local taken = tonumber(summary[1])
  if type(summary[4]) == 'table' then
    for _, consumer in ipairs(summary[4]) do
      if consumer[1] == '_orphan' then taken = taken - tonumber(consumer[2]) end
    end
  end
  if redis.call('XLEN', queue) - taken >= tonumber(a[2]) then return '-MAILBOXFULL ' .. a[2] end
  if a[5] ~= '' then
    return '+' .. redis.call('XADD', queue, '*', 'e', a[3], 'd', a[4], 'r', a[5], 'c', a[6])
  end
  return '+' .. redis.call('XADD', queue, '*', 'e', a[3], 'd', a[4])
end

-- id, token, "o" (own) or "g" (group), entry id -> 1, or 0 if it is not that consumer's
local function ack(a)
  local id, entry = a[1], a[4]
  local state = fields(R .. ':l:' .. id, 'token', 'group')
  if state[1] ~= a[2] then return '+0' end
  local key = R .. ':mb:' .. id
  if a[3] == 'g' then key = R .. ':g:' .. (state[2] or '') end
  if not pending(key, entry, entry, 1, id)[1] then return '+0' end
  redis.call('XACK', key, 'g', entry)
  redis.call('XDEL', key, entry)
  return '+1'
end

-- As ack. Own mail stays pending: the consumer is woken and its next TAKE hands it out
-- again (before newer mail). Group mail goes back to the group.
local function release(a)
  local id, entry = a[1], a[4]
  local state = fields(R .. ':l:' .. id, 'token', 'group')
  if state[1] ~= a[2] then return '+0' end
  if a[3] == 'g' then
    local key = R .. ':g:' .. (state[2] or '')
    if not pending(key, entry, entry, 1, id)[1] then return '+0' end
    xclaim(key, '_orphan', {entry}, {'JUSTID'})
    wake_members(state[2], id)
    return '+1'
  end
  if not pending(R .. ':mb:' .. id, entry, entry, 1, id)[1] then return '+0' end
  wake(a[2])
  return '+1'
end

-- reply stream, MAXLEN, TTL ms, correlation, "1"/"0", value JSON
local function reply(a)
  if late then return '-EXPIRED' end
  redis.call('XADD', a[1], 'MAXLEN', '~', a[2], '*', 'c', a[4], 'k', a[5], 'v', a[6])
  redis.call('PEXPIRE', a[1], a[3])
  return '+1'
end

local operations = {put = put, put_group = put_group, ack = ack, release = release,
                    reply = reply}
local results = {}
local i = 3
while i <= #ARGV do
  local operation, count = operations[ARGV[i]], tonumber(ARGV[i + 1])
  local arguments = {}
  for k = 1, count do arguments[k] = ARGV[i + 1 + k] end
  i = i + 2 + count
  local ok, result = pcall(operation, arguments)
  if not ok then
    if type(result) == 'table' and result.err then result = result.err end
    result = '-ERR ' .. tostring(result)
  end
  results[#results + 1] = result
end
return results
""")


class Batch:
    """The operations made in this reactor turn, sent at its end as one ``BATCH`` call."""

    #: Most operations in one call.
    MAX = 256

    def __init__(self, boxes: RedisMailboxes) -> None:
        self._boxes = boxes
        self._operations: list[tuple[str, list[str], Deferred[str]]] = []
        self._timer: IDelayedCall | None = None

    def add(self, operation: str, arguments: list[str]) -> Deferred[str]:
        """
        Fires with the operation's result (without its ``+``), or fails with
        :class:`RefusedError` (its refusal) or ChannelUnavailableError (the call's).
        """
        done: Deferred[str] = Deferred()
        self._operations.append((operation, arguments, done))
        if len(self._operations) >= self.MAX:
            self.flush()
        elif self._timer is None:
            self._timer = self._boxes.channel.clock.callLater(0, self.flush)
        return done

    def flush(self) -> None:
        """Send what waits now (before a call that must come after it)."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        operations, self._operations = self._operations, []
        if not operations:
            return
        boxes = self._boxes
        arguments: list[Argument] = [boxes.keys.root, DEADLINE]
        for name, values, _ in operations:
            arguments += [name, str(len(values)), *values]
        what = operations[0][0] if len(operations) == 1 else f"{len(operations)} operations"
        answer = boxes.run(BATCH, arguments, what)

        def answered(results: Any) -> None:
            for (_, _, done), result in zip(operations, results):
                if isinstance(result, str) and result.startswith("+"):
                    done.callback(result[1:])
                else:
                    done.errback(RefusedError(str(result)[1:]))

        def failed(failure: Failure) -> None:
            for _, _, done in operations:
                done.errback(failure)

        answer.addCallbacks(answered, failed)


class RefusedError(Exception):
    """An operation's refusal by the script (``UNKNOWNLISTENER``, ``MAILBOXFULL 5``...)."""

    @property
    def word(self) -> str:
        words = str(self).split()
        return words[0] if words else ""

    @property
    def limit(self) -> int:
        words = str(self).split()
        return int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
