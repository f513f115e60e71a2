"""
twisted_event_dispatcher: multi-phase, Deferred-aware event dispatching for Twisted.

Public names only; see the README and ``doc/`` for usage.
"""

from ._matching import AnyOf
from .dispatcher import DEFAULT_PHASES, EventDispatcher
from .interfaces import IEventDispatcher
from .registry import get_dispatcher, query_dispatcher, register_dispatcher, unregister_dispatcher
from .results import FireResult, HandlerOutcome
from .service import EventDispatcherService

__all__ = [
    "DEFAULT_PHASES",
    "AnyOf",
    "EventDispatcher",
    "EventDispatcherService",
    "FireResult",
    "HandlerOutcome",
    "IEventDispatcher",
    "get_dispatcher",
    "query_dispatcher",
    "register_dispatcher",
    "unregister_dispatcher",
]

__version__ = "0.1.0"
