"""
Listeners: ids with mailboxes on a channel (eric-sse's model), beside its live subscribers.

A listener is registered on a channel (``channel.add_listener``), optionally under a
group; messages are broadcast to every mailbox, dispatched to one listener, or dispatched
to a group (one running member takes each); its consumer acknowledges what it handled,
and what is not acknowledged is redelivered. Actions answer requests. The storage is the
channel's backend (:class:`MemoryMailboxes` in this process; Redis Streams across
processes), behind one contract, :class:`Mailboxes`.
"""

from ._backend import POLICIES, Attachment, Mailboxes, MailSink, ReplyHandler
from .listener import Action, Consumer, Handler, Listener, MailStream
from .mail import (
    CONTROL_TYPES,
    MESSAGE_TYPE_CLOSED,
    MESSAGE_TYPE_MISSED,
    MESSAGE_TYPE_START,
    MESSAGE_TYPE_STOP,
    ListenerInfo,
    Mail,
)
from .memory import MemoryMailboxes
from .processing import Processor

__all__ = [
    "CONTROL_TYPES",
    "MESSAGE_TYPE_CLOSED",
    "MESSAGE_TYPE_MISSED",
    "MESSAGE_TYPE_START",
    "MESSAGE_TYPE_STOP",
    "POLICIES",
    "Action",
    "Attachment",
    "Consumer",
    "Handler",
    "Listener",
    "ListenerInfo",
    "Mail",
    "MailSink",
    "MailStream",
    "Mailboxes",
    "MemoryMailboxes",
    "Processor",
    "ReplyHandler",
]
