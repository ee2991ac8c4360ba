"""The CPU drivers' stall fallback (csrc/common/stall_guard.h): after a parallel region whose
master waited far longer than its own work, calls run on one thread for a time window that
starts at 5 ms, doubles while the stalls go on (up to 2 s) and starts over after a clean region."""

from __future__ import annotations

import pytest

from pyllm import _C

FIRST, LONGEST = 0.005, 2.0


def stall(guard, now: float) -> None:
    guard.record_at(own_s=1e-4, wait_s=0.012, now=now)  # waited a scheduler tick for a worker


def test_clean_regions_and_short_waits_keep_every_thread():
    g = _C._StallGuard()
    assert not g.solo_at(0.0)
    g.record_at(own_s=2e-3, wait_s=1e-3, now=1.0)  # waiting less than 4x its own work
    g.record_at(own_s=1e-6, wait_s=1.5e-4, now=1.0)  # under 200 µs: never a stall
    assert not g.solo_at(1.0)


def test_the_window_is_time_and_doubles_while_stalls_go_on():
    g = _C._StallGuard()
    now, window = 10.0, FIRST
    for _ in range(12):
        stall(g, now)
        assert g.solo_at(now + 0.99 * window)
        assert not g.solo_at(now + 1.01 * window)
        now += window * 1.01  # the next parallel region stalls too
        window = min(2 * window, LONGEST)
    assert window == LONGEST


def test_a_clean_region_starts_the_window_over():
    g = _C._StallGuard()
    for k in range(5):
        stall(g, 100.0 + k)
    g.record_at(own_s=1e-3, wait_s=1e-4, now=200.0)
    stall(g, 300.0)
    assert g.solo_at(300.0 + FIRST * 0.9) and not g.solo_at(300.0 + FIRST * 1.1)


@pytest.mark.parametrize("wait", [0.0, 1e-5])
def test_no_stall_no_window(wait):
    g = _C._StallGuard()
    g.record_at(own_s=0.0, wait_s=wait, now=5.0)
    assert not g.solo_at(5.0)
