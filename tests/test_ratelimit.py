"""GCRA rate limiting with an injected clock: ``now`` is an argument, so no sleeps, no trio.

Rates here are powers of two so every expected ``retry_after_s`` is exact in binary floating point.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taleus_bootstrap._ratelimit import Decision, Gcra, KeyedRateLimiter, SingleRateLimiter

# 4 events per 2 s: one every 0.5 s, 3 at once.
RATE, PERIOD, BURST, INTERVAL = 4, 2.0, 3, 0.5
T0 = 1000.0


def gcra() -> Gcra:
    return Gcra(rate=RATE, period=PERIOD, burst=BURST)


# --------------------------------------------------------------------------- GCRA


def test_parameters() -> None:
    g = gcra()
    assert g.emission_interval == INTERVAL
    assert g.tolerance == INTERVAL * (BURST - 1)


@pytest.mark.parametrize(
    ("rate", "period", "burst"), [(0, 1.0, 1), (-1, 1.0, 1), (1, 0.0, 1), (1, -1.0, 1), (1, 1.0, 0)]
)
def test_invalid_parameters(rate: float, period: float, burst: int) -> None:
    with pytest.raises(ValueError):
        Gcra(rate=rate, period=period, burst=burst)


def test_exactly_burst_at_once_then_one_per_interval() -> None:
    limiter = SingleRateLimiter(gcra())
    assert [limiter.check(T0).allowed for _ in range(BURST)] == [True] * BURST
    refused = limiter.check(T0)
    assert refused == Decision(False, INTERVAL)
    # Steady state: exactly one event per emission interval, each refused just before its time.
    for k in range(1, 20):
        due = T0 + k * INTERVAL
        assert limiter.check(due - INTERVAL / 4) == Decision(False, INTERVAL / 4)
        assert limiter.check(due) == Decision(True, 0.0)
        assert limiter.check(due) == Decision(False, INTERVAL)


def test_retry_after_is_exact() -> None:
    limiter = SingleRateLimiter(gcra())
    for _ in range(BURST):
        limiter.check(T0)
    assert limiter.check(T0).retry_after_s == 0.5
    assert limiter.check(T0 + 0.125).retry_after_s == 0.375
    assert limiter.check(T0 + 0.25).retry_after_s == 0.25
    decision = limiter.check(T0 + 0.5)
    assert decision.allowed
    assert decision.retry_after_s == 0.0


def test_retry_after_is_honest() -> None:
    """Waiting exactly ``retry_after_s`` is enough, and any less is not."""
    limiter = SingleRateLimiter(gcra())
    now = T0
    for _ in range(BURST):
        limiter.check(now)
    for _ in range(10):
        refused = limiter.check(now)
        assert not refused.allowed
        assert not limiter.check(now + refused.retry_after_s - 0.0625).allowed
        now += refused.retry_after_s
        assert limiter.check(now).allowed


def test_refused_events_do_not_move_the_tat() -> None:
    g = gcra()
    tat = None
    for _ in range(BURST):
        decision, tat = g.decide(tat, T0)
        assert decision.allowed
    assert tat == T0 + BURST * INTERVAL
    decision, new_tat = g.decide(tat, T0)
    assert not decision.allowed
    assert new_tat is None

    limiter = SingleRateLimiter(g)
    for _ in range(BURST):
        limiter.check(T0)
    for _ in range(1000):  # hammering while refused earns no penalty...
        assert not limiter.check(T0 + 0.25).allowed
    assert limiter.check(T0 + INTERVAL).allowed  # ...and no credit either
    assert not limiter.check(T0 + INTERVAL).allowed


def test_full_burst_again_after_idling() -> None:
    limiter = SingleRateLimiter(gcra())
    for _ in range(BURST):
        assert limiter.check(T0).allowed
    later = T0 + BURST * INTERVAL
    assert [limiter.check(later).allowed for _ in range(BURST + 1)] == [True] * BURST + [False]
    much_later = later + 3600.0
    assert [limiter.check(much_later).allowed for _ in range(BURST + 1)] == [True] * BURST + [False]


def test_unseen_key_is_allowed() -> None:
    decision, tat = gcra().decide(None, T0)
    assert decision == Decision(True, 0.0)
    assert tat == T0 + INTERVAL


def test_burst_of_one_is_a_plain_rate() -> None:
    limiter = SingleRateLimiter(Gcra(rate=1, period=1.0, burst=1))
    assert limiter.check(T0).allowed
    assert limiter.check(T0) == Decision(False, 1.0)
    assert limiter.check(T0 + 0.5) == Decision(False, 0.5)
    assert limiter.check(T0 + 1.0).allowed


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(
        st.sampled_from([0.0, 0.0, 0.0, 0.0625, 0.125, 0.25, 0.5, 1.0, 4.0]),
        min_size=1,
        max_size=80,
    )
)
def test_never_more_than_burst_plus_rate(gaps: list[float]) -> None:
    """Over any window, allowed events <= burst + window / interval; none is refused early."""
    limiter = SingleRateLimiter(gcra())
    now = T0
    allowed_at: list[float] = []
    for gap in gaps:
        now += gap
        decision = limiter.check(now)
        if decision.allowed:
            allowed_at.append(now)
        else:
            assert decision.retry_after_s > 0
    for i, start in enumerate(allowed_at):
        for j in range(i, len(allowed_at)):
            window = allowed_at[j] - start
            assert j - i + 1 <= BURST + window / INTERVAL


# --------------------------------------------------------------------------- keyed


def test_keyed_limiter_refuses_non_positive_max_keys() -> None:
    with pytest.raises(ValueError):
        KeyedRateLimiter(gcra(), max_keys=0)


def test_keys_are_limited_independently() -> None:
    limiter = KeyedRateLimiter(gcra(), max_keys=100)
    for _ in range(BURST):
        assert limiter.check("flood", T0).allowed
    assert limiter.check("flood", T0) == Decision(False, INTERVAL)
    for _ in range(BURST):
        assert limiter.check("calm", T0).allowed


def test_flooding_key_stays_limited_while_others_are_admitted() -> None:
    limiter = KeyedRateLimiter(gcra(), max_keys=1000)
    flood_allowed = 0
    others_refused = 0
    now = T0
    for i in range(2000):
        now = T0 + i * (INTERVAL / 8)  # the flooder tries 8 times per interval
        flood_allowed += limiter.check("flood", now).allowed
        if i % 4 == 0:
            others_refused += not limiter.check(f"peer-{i}", now).allowed
    elapsed = now - T0
    assert flood_allowed <= BURST + elapsed / INTERVAL
    assert flood_allowed >= elapsed / INTERVAL  # limited, not locked out
    assert others_refused == 0
    assert len(limiter) <= 1000


def test_memory_is_bounded_under_many_keys() -> None:
    limiter = KeyedRateLimiter(gcra(), max_keys=1000)
    now = T0
    for i in range(20_000):
        now = T0 + i * (INTERVAL / 100)  # 100 fresh keys per interval
        limiter.check(f"peer-{i}", now)
        assert len(limiter) <= 1000
    assert len(limiter) == 1000
    assert limiter.evictions > 0  # recovered keys made room for new ones


def test_a_flood_of_fresh_keys_cannot_reset_a_limited_key() -> None:
    """The limited key stays limited however many fresh keys arrive: only recovered keys are
    forgotten, and while none is, new keys are refused instead."""
    limiter = KeyedRateLimiter(gcra(), max_keys=100)
    for _ in range(BURST):
        assert limiter.check("flooder", T0).allowed
    assert not limiter.check("flooder", T0).allowed  # burst spent: limited until T0 + 1.0
    fresh_refused = 0
    for i in range(10_000):
        now = T0 + i * 0.00005  # 10 000 fresh peer ids within half a second
        decision = limiter.check(f"fresh-{i}", now)
        fresh_refused += not decision.allowed
        assert not limiter.check("flooder", now).allowed, f"reset after {i} fresh keys"
        assert len(limiter) <= 100
    assert fresh_refused >= 10_000 - 99  # room only for 99 keys besides the flooder
    assert limiter.refused_full == fresh_refused
    # The first fresh keys (TAT T0 + 0.5) are the first to recover: a new key gets room then.
    refused = limiter.check("fresh-new", T0 + 0.4)
    assert refused.full and refused.retry_after_s == pytest.approx(0.1)
    assert limiter.check("fresh-new", T0 + INTERVAL).allowed
    # The flooder was never forgotten: one start has regenerated, not a fresh burst.
    assert limiter.check("flooder", T0 + INTERVAL).allowed
    assert not limiter.check("flooder", T0 + INTERVAL).allowed


def test_a_full_limiter_forgets_a_recovered_key_for_a_new_one() -> None:
    limiter = KeyedRateLimiter(gcra(), max_keys=3)
    assert limiter.check("once", T0 - 1.0).allowed  # TAT T0 - 0.5: recovered at T0
    for key in ("b", "c"):
        for _ in range(BURST):
            assert limiter.check(key, T0).allowed  # TAT T0 + 1.5: limited at T0
    assert limiter.check("d", T0).allowed  # "once" has recovered: forgotten to make room
    assert limiter.evictions == 1 and len(limiter) == 3
    # "b" and "c" are remembered and still limited; nothing has recovered for "e".
    assert not limiter.check("b", T0).allowed
    assert not limiter.check("c", T0).allowed
    assert limiter.check("e", T0) == Decision(False, INTERVAL, full=True)  # "d" recovers first
    assert limiter.check("e", T0 + INTERVAL).allowed


def test_prune_drops_keys_whose_tat_passed() -> None:
    limiter = KeyedRateLimiter(gcra(), max_keys=100)
    limiter.check("once", T0)  # TAT = T0 + 0.5
    for _ in range(BURST):
        limiter.check("busy", T0)  # TAT = T0 + 1.5
    assert limiter.prune(T0 + 0.25) == 0
    assert len(limiter) == 2
    assert limiter.prune(T0 + INTERVAL) == 1
    assert len(limiter) == 1
    # "busy" is still remembered: one event has regenerated, not a whole burst.
    assert limiter.check("busy", T0 + INTERVAL).allowed  # TAT = T0 + 2.0
    assert not limiter.check("busy", T0 + INTERVAL).allowed
    assert limiter.prune(T0 + 1.5) == 0
    assert limiter.prune(T0 + 2.0) == 1
    assert len(limiter) == 0
    assert limiter.prune(T0 + 3600) == 0


def test_pruning_never_changes_a_decision() -> None:
    pruned = KeyedRateLimiter(gcra(), max_keys=100)
    plain = KeyedRateLimiter(gcra(), max_keys=100)
    now = T0
    for i in range(400):
        now = T0 + i * 0.125
        key = f"k{i % 7}"
        if i % 5 == 0:
            pruned.prune(now)
        assert pruned.check(key, now) == plain.check(key, now)
    assert len(pruned) <= len(plain)
