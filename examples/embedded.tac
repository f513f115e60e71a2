# examples/embedded.tac: a Twisted web application that pushes its own events to browsers,
# on the same site as its pages. Run it with:  twistd -n -y examples/embedded.tac
import os

from autobahn.twisted.resource import WebSocketResource
from twisted.application import service, strports
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from twisted_event_dispatcher import EventDispatcher, EventDispatcherService
from twisted_event_dispatcher.bridge import bridge
from twisted_event_dispatcher.carriers.sse import SSEResource
from twisted_event_dispatcher.carriers.websocket import EventWebSocketFactory
from twisted_event_dispatcher.channels import get_channel

# The app's dispatcher, bridged to the channel "orders": every event that gets through
# the phases is published there (by a handler in the "after" phase).
orders = EventDispatcher(allowed_match_spec_keywords=("region",))
bridge(orders, get_channel("orders"))

PAGE = b"""<!doctype html><meta charset="utf-8"><title>Shop</title>
<h1>Payments</h1><ul id="paid"></ul>
<script>
  new EventSource("/sse?event=paid").addEventListener("paid", (e) => {
    const item = document.createElement("li");
    item.textContent = JSON.stringify(JSON.parse(e.data).data);
    document.getElementById("paid").append(item);
  });
</script>
"""


class Home(Resource):
    """The app's own page, at /."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE


class Pay(Resource):
    """POST /pay?order=17&total=1250: the app's own handler; it fires an event."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        try:
            order, total = (int(request.args[name][0]) for name in (b"order", b"total"))
        except (KeyError, ValueError):
            request.setResponseCode(400)
            return b"POST /pay?order=<number>&total=<cents>\n"
        orders.fire_event({"event": "paid", "data": {"order": order, "total": total}},
                          region="eu")
        request.setResponseCode(202)
        return b"accepted\n"


root = Resource()
root.putChild(b"", Home())
root.putChild(b"pay", Pay())
root.putChild(b"ws", WebSocketResource(EventWebSocketFactory(default_channel="orders")))
root.putChild(b"sse", SSEResource(default_channel="orders"))

# The application: the dispatcher's service first, so that on shutdown the site stops
# listening before the dispatcher drains the events in flight (children stop in reverse).
application = service.Application("shop")
shop = service.MultiService()
shop.setServiceParent(application)
EventDispatcherService(orders).setServiceParent(shop)
port = os.environ.get("EMBEDDED_PORT", "8080")
strports.service(f"tcp:{port}:interface=127.0.0.1", Site(root)).setServiceParent(shop)
