"""
The shared test helpers leave no failing Deferred unobserved: one collected later is
logged as "Unhandled error in Deferred" during whatever test runs then, and fails a test
that asserts a clean log (``test_hub_redis``'s outage test did, after ``wait_closed``).
"""

from __future__ import annotations

import gc

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests import _control
from tests._hub import HubProcess
from tests._log import LogCapture


def test_wait_closed_leaves_no_timeout_behind(
    log: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(_control, "reactor", clock)
    client = _control.LineClient()
    waiting = Deferred.fromCoroutine(client.wait_closed(timeout=5.0))
    client.connectionLost()  # the hub closes the connection while it waits
    closed: list[object] = []
    waiting.addCallback(closed.append)
    assert closed == [None]
    clock.advance(10)  # past the timeout of any waiter left behind
    del client, waiting
    gc.collect()
    assert log.unhandled() == []

    silent = _control.LineClient()
    waiting = Deferred.fromCoroutine(silent.wait_closed(timeout=5.0))
    clock.advance(5)  # it still gives up after its timeout
    failed: list[Failure] = []
    waiting.addErrback(failed.append)
    assert len(failed) == 1 and failed[0].check(DeferredTimeoutError)


def test_a_hub_that_exits_before_listening_leaves_no_failure_behind(log: LogCapture) -> None:
    expected = HubProcess()  # (a test of a bad option awaits only `ended`)
    expected.processEnded(Failure(ProcessTerminated(exitCode=2)))
    codes: list[int] = []
    expected.ended.addCallback(codes.append)
    assert codes == [2]
    del expected
    gc.collect()
    assert log.unhandled() == []

    awaited = HubProcess()
    listening = awaited.listening
    awaited.processEnded(Failure(ProcessTerminated(exitCode=1)))
    failed: list[Failure] = []
    listening.addErrback(failed.append)
    awaited.listening.addErrback(failed.append)  # (asked after the end: the same error)
    assert [f.check(RuntimeError) for f in failed] == [RuntimeError, RuntimeError]
    assert "the hub exited (1) before listening" in str(failed[0].value)
