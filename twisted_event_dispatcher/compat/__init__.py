"""
Compatibility layers: other libraries' APIs on this project's engine.

:mod:`twisted_event_dispatcher.compat.blinker` is a drop-in for `blinker` 1.9: code written
for blinker imports it instead (``from twisted_event_dispatcher.compat import blinker``) and
runs unchanged under Twisted.
"""
