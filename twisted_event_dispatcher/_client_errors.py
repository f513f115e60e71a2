"""
The exceptions of :mod:`twisted_event_dispatcher.client`, and the hub's error answers turned
back into the library's exceptions.

The hub answers a request it could not carry out with ``{"error": message, "v": verb,
"code": code}`` (a ``{"type": "error", "reason", "code"}`` frame on WebSocket). The ``code``
says which library exception the hub raised, so a client catches the same classes as code
that drives a channel in-process: ``UnknownListenerError``, ``MailboxFullError``,
``RemoteActionError``, ``RequestTimeoutError``... The message is the hub's own, and the
hub's ``code`` is kept as the exception's ``code`` attribute (``"unknown_listener"``...),
whatever its class.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import (
    ChannelExistsError,
    ChannelLimitError,
    ChannelUnavailableError,
    DefaultChannelError,
    EventDispatcherError,
    InvalidDataError,
    ListenerExistsError,
    ListenerLimitError,
    MailboxFullError,
    RemoteActionError,
    RequestTimeoutError,
    ReservedTypeError,
    UnknownChannelError,
    UnknownGroupError,
    UnknownListenerError,
)

__all__ = ["HubConnectionError", "HubRequestError", "error_from_answer"]


class HubRequestError(EventDispatcherError, ValueError):
    """
    The hub refused a request for a reason no other library exception names: a malformed
    or unknown request (``code`` ``"bad_request"``), a per-connection bound (``"limit"``),
    a verb sent on a streaming connection (``"streaming"``), a request too large
    (``"too_large"``), a verb the transport does not offer (``"unsupported"``), or a
    failure of the hub's own (``"internal"``). Also raised by the client for its own
    bounds (``"limit"``: too many calls awaiting their answer).

    :ivar code: the hub's error code.
    :ivar verb: the verb of the refused request (``"d"``, ``"dispatch"``...), if known.
    """

    def __init__(self, message: str, code: str = "bad_request", verb: object = None) -> None:
        self.code = code
        self.verb = verb
        super().__init__(message)


class HubConnectionError(EventDispatcherError, ConnectionError):
    """
    The connection to the hub could not be made, or was lost before the answer came. A
    call that fails with it may or may not have been carried out by the hub: the client
    never sends it again by itself (a dispatch sent twice would be delivered twice).
    """


_MAILBOX_LIMIT = re.compile(r"\((\d+) messages")


def _made(cls: type[BaseException], message: str, **fields: Any) -> BaseException:
    """
    An instance of the library exception ``cls`` carrying the hub's ``message`` and the
    attributes its own constructor would set (built without that constructor: the hub's
    text already says everything, in the hub's words).
    """
    error = cls.__new__(cls)
    BaseException.__init__(error, message)
    for name, value in fields.items():
        setattr(error, name, value)
    return error


def error_from_answer(answer: Mapping[str, Any], request: Mapping[str, Any]) -> BaseException:
    """
    The exception for the error ``answer`` (canonical keys) to ``request`` (the canonical
    request the client sent): the library class its ``code`` names, with the request's
    channel, listener, group... as its attributes; :class:`HubRequestError` otherwise.
    Whatever its class, its ``code`` attribute is the hub's code (``"bad_request"`` if
    the answer had none), so a caller can report it (the ``client`` command does).
    """
    error = _exception_for(answer, request)
    if not isinstance(getattr(error, "code", None), str):
        code = answer.get("code")
        error.code = code if isinstance(code, str) else "bad_request"  # type: ignore[attr-defined]
    return error


def _exception_for(answer: Mapping[str, Any], request: Mapping[str, Any]) -> BaseException:
    message = str(answer.get("error") or "the hub refused the request")
    code = answer.get("code")
    code = code if isinstance(code, str) else "bad_request"
    verb = answer.get("v", request.get("v"))
    channel = request.get("c")
    channel = channel if isinstance(channel, str) else ""
    target = request.get("r") if request.get("r") is not None else request.get("g")
    if code == "unknown_channel":
        return _made(UnknownChannelError, message, name=channel)
    if code == "unknown_listener":
        return _made(UnknownListenerError, message, channel=channel, listener_id=target)
    if code == "unknown_group":
        return _made(UnknownGroupError, message, channel=channel, group=target)
    if code == "exists":
        if verb in ("r", "register"):
            return _made(ListenerExistsError, message, channel=channel, listener_id=target)
        return _made(ChannelExistsError, message, name=channel)
    if code == "mailbox_full":
        found = _MAILBOX_LIMIT.search(message)
        return _made(
            MailboxFullError, message, channel=channel, target=str(target),
            limit=int(found.group(1)) if found else 0, group="group" in message[:20],
        )
    if code == "remote":
        remote_type = answer.get("remote_type")
        remote_type = remote_type if isinstance(remote_type, str) else "RemoteError"
        remote_message = answer.get("remote_message")
        if not isinstance(remote_message, str):
            prefix = f"{remote_type}: "
            remote_message = message[len(prefix):] if message.startswith(prefix) else message
        return RemoteActionError(remote_type, remote_message)
    if code == "timeout":
        timeout = request.get("timeout", 10.0)
        return _made(
            RequestTimeoutError, message, target=str(target), event=request.get("t"),
            timeout=float(timeout) if isinstance(timeout, int | float) else 0.0,
        )
    if code == "limit" and verb in ("c", "create_channel"):
        found = re.search(r"has (\d+) channels", message)
        return _made(ChannelLimitError, message, limit=int(found.group(1)) if found else 0)
    if code == "limit" and verb in ("r", "register"):
        found = re.search(r"has (\d+) listeners", message)
        if found:
            return _made(ListenerLimitError, message, channel=channel, limit=int(found.group(1)))
    simple: dict[str, type[BaseException]] = {
        "reserved": ReservedTypeError,
        "invalid_data": InvalidDataError,
        "unavailable": ChannelUnavailableError,
    }
    if code in simple:
        return simple[code](message)
    if code == "default_channel":
        return _made(DefaultChannelError, message, name=channel)
    return HubRequestError(message, code, verb)
