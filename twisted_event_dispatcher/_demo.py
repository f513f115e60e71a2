"""
The example program run by ``python -m twisted_event_dispatcher demo``: a dispatcher for
user events, handlers of every kind, and a log of what ran in which phase.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ._matching import AnyOf
from .dispatcher import EventDispatcher
from .registry import get_dispatcher, register_dispatcher, unregister_dispatcher

log = Logger(namespace="demo")


async def run_demo(reactor: IReactorTime) -> None:
    """Fire a few events through a three-phase dispatcher and log each step."""
    users = EventDispatcher(
        ("event_type", "user", "role"), abort_on_failure=("before",), clock=reactor
    )
    register_dispatcher(users, name="users")
    try:
        await _demo(get_dispatcher("users"), reactor)
    finally:
        unregister_dispatcher("users")


async def _demo(users: EventDispatcher, reactor: IReactorTime) -> None:
    def audit(event: dict[str, Any]) -> None:
        log.info("  before: audit log records {event}", event=event)

    def veto_banned(event: dict[str, Any]) -> None:
        if event.get("banned"):
            raise PermissionError(f"{event['name']} is banned")

    def send_welcome_mail(event: dict[str, Any]) -> Deferred[str]:
        log.info("  during: mailing {name} (takes 50 ms) ...", name=event["name"])
        return deferLater(reactor, 0.05, lambda: f"mail sent to {event['name']}")

    async def provision_home(event: dict[str, Any]) -> str:
        await deferLater(reactor, 0.02, lambda: None)
        log.info("  during: home directory created for {name}", name=event["name"])
        return f"/home/{event['name']}"

    def notify_admin(event: dict[str, Any]) -> None:
        log.info("  after: admins notified about new {role} {name}", **event)

    await users.add_event_handler(audit, "before")
    await users.add_event_handler(veto_banned, "before", event_type="user_created")
    await users.add_event_handler(send_welcome_mail, "during", event_type="user_created")
    await users.add_event_handler(provision_home, "during", role=AnyOf("user", "admin"))
    await users.add_event_handler(notify_admin, "after", role="admin")

    log.info("firing before start(): the event is buffered")
    early = users.fire_event(
        {"name": "alice", "role": "admin"}, event_type="user_created", role="admin"
    )
    log.info("start(): buffered events are dispatched in order")
    users.start()
    result = await early
    log.info("alice: {result}; results: {values}", result=result, values=result.results)

    log.info("a guest: only the handlers whose match spec fits run")
    result = await users.fire_event(
        {"name": "bob", "role": "guest"}, event_type="user_created", role="guest"
    )
    log.info("bob: {result}; results: {values}", result=result, values=result.results)

    log.info("a banned user: the 'before' phase vetoes, later phases are skipped")
    result = await users.fire_event(
        {"name": "mallory", "role": "user", "banned": True},
        event_type="user_created",
        role="user",
    )
    log.info("mallory: {result}", result=result)

    await users.stop()
    log.info("stopped; every event finished")
