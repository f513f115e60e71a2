"""
Register a dispatcher as a zope utility and look it up again.

A Twisted application typically creates one dispatcher per kind of event at start-up and
registers it under a name, so that any subsystem can find it without having it injected::

    register_dispatcher(EventDispatcher(("user",)), name="users")
    ...
    get_dispatcher("users").fire_event(event, user="alice")

Every helper takes an optional ``registry`` (any ``zope.interface.registry.Components``);
the global site manager is used otherwise.
"""

from __future__ import annotations

from typing import Any

from zope.component import getGlobalSiteManager
from zope.interface.interfaces import ComponentLookupError
from zope.interface.registry import Components

from .interfaces import IEventDispatcher

__all__ = [
    "ComponentLookupError",
    "get_dispatcher",
    "query_dispatcher",
    "register_dispatcher",
    "unregister_dispatcher",
]


def _components(registry: Components | None) -> Any:
    return getGlobalSiteManager() if registry is None else registry


def register_dispatcher(
    dispatcher: object, name: str = "", registry: Components | None = None
) -> None:
    """
    Register ``dispatcher`` as the ``IEventDispatcher`` utility called ``name``.

    :raises TypeError: ``dispatcher`` does not provide ``IEventDispatcher``.
    """
    if not IEventDispatcher.providedBy(dispatcher):
        raise TypeError(f"{dispatcher!r} does not provide IEventDispatcher")
    _components(registry).registerUtility(dispatcher, IEventDispatcher, name)


def unregister_dispatcher(name: str = "", registry: Components | None = None) -> bool:
    """Unregister the dispatcher called ``name``; False if none was registered."""
    return bool(_components(registry).unregisterUtility(provided=IEventDispatcher, name=name))


def get_dispatcher(name: str = "", registry: Components | None = None) -> Any:
    """
    The dispatcher registered as ``name``.

    :raises zope.interface.interfaces.ComponentLookupError: none is registered.
    """
    return _components(registry).getUtility(IEventDispatcher, name)


def query_dispatcher(
    name: str = "", registry: Components | None = None, default: object = None
) -> Any:
    """The dispatcher registered as ``name``, or ``default``."""
    return _components(registry).queryUtility(IEventDispatcher, name, default)
