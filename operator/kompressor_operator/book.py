"""The cluster's worker budget as one operator process books it: the state every job's step shares.

What it is for: each job decides its replicas on its own timer, in its own thread, so two jobs
deciding at once from what they last saw of each other would both take the same free pods (ten
jobs applied together once asked for 8 workers with maxTotalWorkers 3). The book holds every job's
claim and the workers each job's Deployment asks for or has reserved (`held`); a step decides and
reserves under one lock, before its Deployment is patched, and gives pods back only once the
Deployment carries fewer. So the replicas asked for, summed, never exceed the budget.

What it must never do: decide (policy.grant does, through reconcile), or call out of the process
while it holds the lock: it is a lock and two dicts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kompressor_operator.policy import Claim
from kompressor_operator.reconcile import Budget


class BudgetBook:
    """Every job's claim and held workers in this operator process, behind one lock (see above)."""

    def __init__(self, max_total: int) -> None:
        self.max_total = max_total
        self._lock = threading.RLock()
        self._claims: dict[str, Claim] = {}
        self._held: dict[str, int] = {}

    @contextmanager
    def deciding(self) -> Iterator[Budget]:
        """The budget as booked now; no other job decides until the block ends, so a decision made
        from it and `reserve`d inside the block cannot race another job's."""
        with self._lock:
            yield Budget(self.max_total, dict(self._claims), dict(self._held))

    def reserve(self, claim: Claim, replicas: int) -> None:
        """Keep the job's claim, and book `replicas` before its Deployment is patched to them. A fall
        is not booked yet (the pods are still asked for): `settle` books it once the patch is done."""
        with self._lock:
            self._claims[claim.key] = claim
            self._held[claim.key] = max(self._held.get(claim.key, 0), replicas)

    def settle(self, key: str, replicas: int) -> None:
        """The job's Deployment now asks for `replicas`: what it gave back is free for others."""
        with self._lock:
            self._held[key] = replicas

    def adopt(self, key: str, replicas: int) -> None:
        """A Deployment found asking for `replicas` (an operator restarted, or a standby that took
        over): they count against the budget before any job decides again."""
        with self._lock:
            self._held[key] = max(self._held.get(key, 0), replicas)

    def release(self, key: str) -> None:
        """The job's workers are scaled to 0 (finished) or its Deployment is going (deleted)."""
        with self._lock:
            self._claims.pop(key, None)
            self._held.pop(key, None)

    def held(self) -> int:
        """The workers asked for or reserved, summed over every job."""
        with self._lock:
            return sum(self._held.values())
