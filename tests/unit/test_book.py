"""The BudgetBook: steps in many threads at once book within the budget (issue 21's burst)."""

from __future__ import annotations

import threading
import time

from kompressor_operator.book import BudgetBook
from kompressor_operator.policy import Claim, Sample, ScaleState
from kompressor_operator.reconcile import budgeted
from tests.unit.test_reconcile import SPEC

BACKLOG = Sample(ready=50, published=50, accounted=0)


def test_ten_jobs_deciding_at_once_ask_for_no_more_than_the_budget():
    """Ten threads decide at the same moment, each patching its 'Deployment' after a pause (an API
    call); the replicas asked for, summed, never exceed maxTotalWorkers 3, and the three jobs of
    priority 10 hold all three once everyone has stepped twice."""
    book, deployments, lock, seen = BudgetBook(3), {}, threading.Lock(), []
    start = threading.Barrier(10)

    def job(i: int) -> None:
        spec = SPEC.model_copy(update={"priority": 10 if i >= 7 else 0})
        state = ScaleState()
        start.wait()
        for step in range(4):
            with book.deciding() as budget:
                decision, claim = budgeted(BACKLOG, spec, state, float(step), f"uid-{i}", float(i), budget)
                book.reserve(claim, decision.replicas)
            time.sleep(0.01)  # the patch, outside the lock
            with lock:
                deployments[i] = decision.replicas
                seen.append(sum(deployments.values()))
            book.settle(f"uid-{i}", decision.replicas)
            state = decision.state
            start.wait()  # every job steps once per round, as the timers do each second

    threads = [threading.Thread(target=job, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert max(seen) <= 3
    assert sum(deployments[i] for i in (7, 8, 9)) == 3 and book.held() == 3


def test_a_fall_is_booked_only_once_settled_and_adopted_replicas_count():
    book = BudgetBook(4)
    book.adopt("old", 3)  # a Deployment found with 3 (a standby took over)
    with book.deciding() as budget:
        assert budget.held == {"old": 3}
    book.reserve(Claim("old", 0, 1.0, 0), 0)  # it decided 0 but has not patched yet
    assert book.held() == 3
    book.settle("old", 0)
    assert book.held() == 0
    book.release("old")
    with book.deciding() as budget:
        assert (budget.claims, budget.held) == ({}, {})
