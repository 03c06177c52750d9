"""The scaling policy: backlog to replicas, the scale-down window, suspend/finish, the cluster budget."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kompressor.crd import Scaler, Workers
from kompressor_operator.policy import (
    Claim,
    Sample,
    ScaleState,
    allocate_budget,
    decide_replicas,
    deployment_replicas,
    grant,
)

W = Workers(min_replicas=0, max_replicas=20, tasks_per_replica=40, scale_down_delay_seconds=30)


def backlog(ready: int, *, published: int = 0, accounted: int = 0, **flags) -> Sample:
    return Sample(ready=ready, published=published, accounted=accounted, **flags)


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (backlog(0), 0),
        (backlog(1), 1),
        (backlog(40), 1),
        (backlog(41), 2),
        (backlog(100, published=130, accounted=0), 4),  # 30 in flight: published, not accounted
        (backlog(0, published=130, accounted=0), 4),  # the ledger when the broker lags
        (backlog(10, published=500, accounted=480), 1),  # the larger of the two
        (backlog(10_000), 20),
    ],
)
def test_backlog_sets_the_replicas(sample, expected):
    assert decide_replicas(sample, W, ScaleState(), now=0).replicas == expected


def test_reasons_read_as_sentences():
    assert decide_replicas(backlog(130), W, ScaleState(), 0).reason == "backlog 130 / 40 per replica → 4"
    capped = decide_replicas(backlog(1000), W, ScaleState(), 0).reason
    assert capped.endswith("capped by maxReplicas 20")
    raised = decide_replicas(backlog(0), W.model_copy(update={"min_replicas": 2}), ScaleState(), 0)
    assert (raised.replicas, raised.reason.endswith("raised to minReplicas 2")) == (2, True)


def test_outstanding_takes_the_larger_count_and_is_never_negative():
    assert backlog(5, published=4, accounted=0).outstanding == 5
    assert backlog(3, published=9, accounted=2).outstanding == 7
    assert backlog(0, published=2, accounted=9).outstanding == 0


def test_scale_down_waits_for_the_window_then_follows_the_backlog():
    up = decide_replicas(backlog(160), W, ScaleState(), now=0)
    assert (up.replicas, up.changed) == (4, True)
    held = decide_replicas(backlog(40), W, up.state, now=10)
    assert (held.replicas, held.changed) == (4, False)
    assert held.reason == "holding 4 for the 30 s scale-down window (backlog now wants 1)"
    still = decide_replicas(backlog(40), W, held.state, now=29.9)
    assert still.replicas == 4
    down = decide_replicas(backlog(40), W, still.state, now=30)  # 30 s ago has left the window
    assert (down.replicas, down.changed) == (1, True)


def test_scale_down_steps_to_the_highest_recommendation_left_in_the_window():
    state = ScaleState()
    for now, ready in [(0, 400), (10, 200), (20, 80), (35, 0)]:
        decision = decide_replicas(backlog(ready), W, state, now)
        state = decision.state
    # at 35 s the 400 of t=0 has left the window; the 200 of t=10 (5 replicas) is the highest left
    assert decision.replicas == 5
    assert decide_replicas(backlog(0), W, state, 45).replicas == 2
    assert decide_replicas(backlog(0), W, state, 55).replicas == 0


def test_scale_up_is_immediate_inside_the_window():
    first = decide_replicas(backlog(40), W, ScaleState(), 0)
    assert decide_replicas(backlog(400), W, first.state, 1).replicas == 10


def test_suspend_and_finish_give_zero_and_forget_the_window():
    busy = decide_replicas(backlog(400), W.model_copy(update={"min_replicas": 3}), ScaleState(), 0)
    for flag in ("suspended", "finished"):
        decision = decide_replicas(backlog(400, **{flag: True}), W, busy.state, 1)
        assert (decision.replicas, decision.reason, decision.changed) == (0, flag, True)
        assert decision.state == ScaleState()
    resumed = decide_replicas(backlog(80), W, ScaleState(), 2)
    assert resumed.replicas == 2


def test_a_changed_max_applies_at_once_even_inside_the_window():
    big = decide_replicas(backlog(800), W, ScaleState(), 0)
    smaller = decide_replicas(backlog(800), W.model_copy(update={"max_replicas": 5}), big.state, 1)
    assert smaller.replicas == 5


def test_the_cluster_budget_wins_over_min_replicas():
    floor = W.model_copy(update={"min_replicas": 4})
    decision = decide_replicas(backlog(0), floor, ScaleState(), 0, budget=1)
    assert (decision.replicas, decision.wanted) == (1, 4)
    assert decision.reason.endswith("capped by the cluster worker budget at 1")
    starved = decide_replicas(backlog(500), W, ScaleState(), 0, budget=0)
    assert (starved.replicas, starved.wanted) == (0, 13)
    assert decide_replicas(backlog(40), W, ScaleState(), 0, budget=10).replicas == 1


def test_history_stays_short_however_often_it_is_polled():
    rising, steady = ScaleState(), ScaleState()
    for step in range(1000):
        rising = decide_replicas(backlog(step), W, rising, step * 0.1).state
        steady = decide_replicas(backlog(500), W, steady, step * 0.1).state
    # a later recommendation at least as large makes an earlier one irrelevant
    assert len(rising.history) == len(steady.history) == 1


@pytest.mark.parametrize(
    ("claims", "total", "expected"),
    [
        ([Claim("a/x", 0, 1.0, 5), Claim("a/y", 0, 2.0, 5)], 7, {"a/x": 5, "a/y": 2}),
        ([Claim("a/x", 0, 1.0, 5), Claim("a/y", 9, 2.0, 5)], 7, {"a/x": 2, "a/y": 5}),
        ([Claim("b/z", 0, 1.0, 5), Claim("a/z", 0, 1.0, 5)], 6, {"a/z": 5, "b/z": 1}),
        ([Claim("a/x", 0, 1.0, 3)], 100, {"a/x": 3}),
        ([Claim("a/x", 0, 1.0, 3), Claim("a/y", 0, 2.0, 3)], 0, {"a/x": 0, "a/y": 0}),
        ([], 10, {}),
    ],
)
def test_allocate_budget_examples(claims, total, expected):
    assert allocate_budget(claims, total) == expected


def test_allocate_budget_refuses_a_job_claiming_twice():
    with pytest.raises(ValueError, match="a/x"):
        allocate_budget([Claim("a/x", 0, 1.0, 3), Claim("a/x", 1, 1.0, 3)], 10)


# --- properties -----------------------------------------------------------------------------------

workers_st = st.builds(
    lambda lo, span, per, window: Workers(
        min_replicas=lo,
        max_replicas=max(lo + span, 1),
        tasks_per_replica=per,
        scale_down_delay_seconds=window,
    ),
    st.integers(0, 5),
    st.integers(0, 20),
    st.integers(1, 100),
    st.integers(0, 60),
)
rarely = st.integers(0, 9).map(lambda n: n == 0)
samples_st = st.builds(
    Sample,
    ready=st.integers(0, 600),
    published=st.integers(0, 600),
    accounted=st.integers(0, 600),
    finished=rarely,
    suspended=rarely,
)
budgets_st = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 30))
steps_st = st.lists(
    st.tuples(st.floats(0, 40, allow_nan=False), samples_st, budgets_st), min_size=1, max_size=30
)


def _clamped(sample: Sample, workers: Workers) -> int:
    raw = math.ceil(sample.outstanding / workers.tasks_per_replica)
    return min(max(raw, workers.min_replicas), workers.max_replicas)


@settings(max_examples=300, deadline=None)
@given(workers_st, steps_st)
def test_properties_over_any_sequence_of_samples(workers, steps):
    state, now, seen = ScaleState(), 0.0, []  # seen: (time, clamped recommendation) since last reset
    for dt, sample, budget in steps:
        now += dt
        previous = state.current
        decision = decide_replicas(sample, workers, state, now, budget)
        replicas = decision.replicas
        assert decision.changed == (replicas != previous)
        assert decision.state.current == replicas
        if sample.finished or sample.suspended:
            assert replicas == 0
            seen = []
        else:
            recommended = _clamped(sample, workers)
            seen.append((now, recommended))
            capped = budget is not None and budget < decision.wanted
            assert replicas == (budget if capped else decision.wanted)
            # bounds: never above max; never below min unless the budget says so
            assert replicas <= workers.max_replicas
            assert capped or replicas >= workers.min_replicas
            # never 0 with work outstanding, unless the budget is 0
            if sample.outstanding > 0 and not capped:
                assert replicas >= 1
            # scale up is immediate
            assert decision.wanted >= recommended
            # a decrease only when nothing in the window wanted more than the new value
            if decision.wanted < previous:
                window = workers.scale_down_delay_seconds
                assert all(r <= decision.wanted for t, r in seen if now - t < window)
            # and the policy never holds more than the window asked for (or the current count)
            in_window = [r for t, r in seen if now - t < workers.scale_down_delay_seconds]
            assert decision.wanted <= max([recommended, *in_window]) or decision.wanted <= previous
        state = decision.state


claims_st = st.lists(
    st.builds(
        Claim,
        key=st.text("abc/", min_size=1, max_size=4),
        priority=st.integers(-2, 2),
        created=st.integers(0, 5).map(float),
        wanted=st.integers(0, 15),
    ),
    max_size=8,
    unique_by=lambda c: c.key,
)


@settings(max_examples=300, deadline=None)
@given(claims_st, st.integers(0, 60))
def test_budget_properties(claims, max_total):
    shares = allocate_budget(claims, max_total)
    assert set(shares) == {c.key for c in claims}
    assert sum(shares.values()) <= max_total
    assert sum(shares.values()) == min(max_total, sum(c.wanted for c in claims))
    for c in claims:
        assert 0 <= shares[c.key] <= c.wanted
    for a in claims:
        for b in claims:
            ahead = (a.priority, -a.created) > (b.priority, -b.created)
            if ahead and shares[b.key] > 0:
                # whoever ranks lower gets something only when the higher one is fully served
                assert shares[a.key] == a.wanted
    assert allocate_budget(list(reversed(claims)), max_total) == shares  # order of input is irrelevant


def test_grant_rises_only_into_pods_nobody_holds():
    """The burst of issue 21: a share is not yet free while another job still holds the pods."""
    low, high = Claim("low", 0, 1.0, 3), Claim("high", 10, 2.0, 3)
    # low holds all 3; high's share is 3 but nothing is free until low gives them back
    assert grant([low, high], {"low": 3}, 3, "high") == 0
    assert grant([low, high], {"low": 3}, 3, "low") == 0  # low is to give them back
    assert grant([low, high], {"low": 1}, 3, "high") == 2
    assert grant([low, high], {}, 3, "high") == 3


def test_grant_keeps_free_pods_for_the_jobs_ranked_ahead():
    """Two pods free: the older job of equal priority is waiting for both, so the younger gets none
    even if it decides first; with three free it gets the one left over."""
    old, young = Claim("old", 0, 1.0, 2), Claim("young", 0, 2.0, 2)
    assert grant([old, young], {}, 2, "young") == 0
    assert grant([old, young], {}, 3, "young") == 1
    assert grant([old, young], {}, 2, "old") == 2


held_st = st.dictionaries(st.text("abc/", min_size=1, max_size=4), st.integers(0, 10), max_size=8)


@settings(max_examples=300, deadline=None)
@given(claims_st, held_st, st.integers(0, 40), st.data())
def test_grant_properties(claims, held, max_total, data):
    """Whatever each job holds (within the budget): a grant is at most the job's share, a fall is to
    the share at once, a rise only into free pods no job ranked ahead is waiting for; so any job
    taking its grant leaves the workers asked for within the budget."""
    if not claims:
        return
    while sum(held.values()) > max_total:  # the book's invariant: what is held fits the budget
        key = max(held, key=held.__getitem__)
        held[key] -= 1
    key = data.draw(st.sampled_from([c.key for c in claims]))
    shares = allocate_budget(claims, max_total)
    granted = grant(claims, held, max_total, key)
    mine = held.get(key, 0)
    assert 0 <= granted <= shares[key]
    if shares[key] <= mine:
        assert granted == shares[key]
    else:
        assert granted >= mine
        assert sum(held.values()) - mine + granted <= max_total
    if granted > mine:
        rank = {c.key: (-c.priority, c.created, c.key) for c in claims}
        ahead = [c.key for c in claims if rank[c.key] < rank[key]]
        free = max_total - sum(held.values())
        waiting = sum(max(shares[k] - held.get(k, 0), 0) for k in ahead)
        assert granted - mine <= free - waiting


# --- an external scaler ---------------------------------------------------------------------------


@given(workers_st, steps_st)
def test_an_external_scaler_is_never_given_a_number_nor_a_budget_claim(workers, steps):
    """Running, suspended or finished, within a budget or not: nothing to set, nothing claimed."""
    external = workers.model_copy(update={"scaler": Scaler.external})
    state, now = ScaleState(), 0.0
    for dt, sample, budget in steps:
        now += dt
        decision = decide_replicas(sample, external, state, now, budget)
        assert (decision.replicas, decision.changed, decision.wanted) == (None, False, 0)
        state = decision.state
    assert allocate_budget([Claim("a/x", 0, 0.0, decision.wanted), Claim("b/y", 0, 1.0, 5)], 5) == {
        "a/x": 0,
        "b/y": 5,
    }


def test_a_deployment_written_for_an_external_scaler_carries_no_replicas():
    assert deployment_replicas(W.model_copy(update={"scaler": Scaler.external}), 3) is None
    assert deployment_replicas(W, 3) == 3


def test_switching_back_to_builtin_scales_from_a_fresh_window():
    external = W.model_copy(update={"scaler": Scaler.external})
    handed = decide_replicas(backlog(400), external, ScaleState(current=7), 0)
    assert handed.reason == "workers.scaler is external: its replicas are the external scaler's"
    back = decide_replicas(backlog(80), W, handed.state, 1)
    assert (back.replicas, back.changed) == (2, True)
    # The controller records the replicas the external scaler left: an idle job goes down from them.
    left = decide_replicas(backlog(0), W, ScaleState(current=5), 2)
    assert (left.replicas, left.changed) == (0, True)
