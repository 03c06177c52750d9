"""The scaling policy: how many worker pods a job gets, and how a cluster-wide budget is shared.

What it is for: turn one observation of a job's queue (`Sample`) and its `spec.workers` into a
replica count (`decide_replicas`), with a reason a person can read in an Event or a log line; and
share the operator's `maxTotalWorkers` between jobs (`allocate_budget`), and say how much of its
share a job may ask for now without the workers asked for ever exceeding it (`grant`).
docs/architecture.md, Scaling; docs/scaling.md, the budget in a burst.

What it must never do: I/O of any kind, read a clock (time is the `now` parameter), or import kopf,
kubernetes or pika. Every input is a parameter and every output a frozen value, so the whole policy
is tested without a cluster (the counter-example is a rule tangled with API calls in a handler).

The rule, documented once here:

- Backlog. `outstanding` counts tasks queued *and* in flight: counting only ready messages scales
  away pods that are busy, whose work is then redelivered and counted again, in a loop. A passive
  declare sees only the ready ones; the operator's own ledger (published - accounted) counts both,
  and covers the broker's numbers when they lag or are missing: the larger of the two wins.
- Target. `ceil(outstanding / tasksPerReplica)`, clamped to [minReplicas, maxReplicas].
- Up at once, down slowly: a rise is applied immediately; a fall only to the highest recommendation
  made during the last `scaleDownDelaySeconds` (the Kubernetes HPA stabilization window: a
  recommendation made exactly that many seconds ago has left the window). The window holds
  unclamped recommendations and the bounds apply afterwards, so an edit of min/maxReplicas takes
  effect at once, as with the HPA.
- Never 0 while work is outstanding: a positive backlog recommends at least one pod and
  maxReplicas is at least 1. Only `suspend`, `finished` or the cluster budget give 0 then.
- Finished: 0, whatever minReplicas says (minReplicas keeps warm pods for a running job, not for
  one that is over). The window is forgotten.
- Suspended: 0 at once, no window; the queue is kept. This is safe: workers drain on SIGTERM within
  their grace period, and a task they could not finish was never acked, so the broker redelivers it
  when the job resumes. The window is forgotten, so a resumed job scales up from 0 on its backlog.
- Budget: the cluster budget wins over minReplicas. minReplicas is one job's wish;
  `maxTotalWorkers` is the cluster operator's promise about the whole cluster's capacity, and a
  job's floor must not break it for every other job. A job held below its floor (even at 0 with
  work outstanding) loses nothing: its tasks wait in the queue.
- Never over the budget, even in a burst: a share is what a job *should* run, not what it may ask
  for now. Pods held by a job that has yet to give them back (its next step scales it down) are not
  free, so a job rises only into pods nobody holds (`grant`): the workers asked for, summed over
  every Deployment, never exceed `maxTotalWorkers`. Free pods go to the jobs ranked first: a job
  may not take a pod that a job ranked ahead of it is still waiting for.
- External (`workers.scaler: external`): no number at all (`replicas` is None), whether the job
  runs, is suspended or has finished, and no claim on the budget. A KEDA ScaledObject or an HPA
  owns the Deployment's replicas; two writers of one field fight, so the operator never writes it.
  Suspend then only reports Suspended: pausing the pods is the external scaler's to do (KEDA's
  `autoscaling.keda.sh/paused-replicas` annotation), as the operator cannot without fighting it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kompressor.crd import Scaler, Workers


@dataclass(frozen=True)
class Sample:
    """One observation of a job's work: broker counts and the operator's own ledger."""

    ready: int
    """Tasks queued and not delivered (a passive queue declare's message count)."""
    published: int
    """Tasks the fan-out has published so far."""
    accounted: int
    """Tasks whose result has been read (succeeded + skipped + failed)."""
    finished: bool = False
    """Every input is accounted for: the job is over."""
    suspended: bool = False
    """spec.suspend is true."""

    @property
    def outstanding(self) -> int:
        """Work not yet done: the larger of the broker's count and the ledger's, never negative."""
        return max(self.ready, self.published - self.accounted, 0)


@dataclass(frozen=True)
class ScaleState:
    """What the policy remembers between decisions: the replicas it set and its recent wishes.

    `history` holds `(time, recommendation)` pairs of the current scale-down window, pruned to those
    that can still decide it: each one is larger than every later one (a sliding-window maximum), so
    its length stays small whatever the poll interval. The first pair is the window's maximum.
    """

    current: int = 0
    history: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class Decision:
    """The replicas to set, why, and the state to pass to the next decision."""

    replicas: int | None
    """None: an external scaler owns the replicas and nothing is to be set."""
    reason: str
    state: ScaleState
    changed: bool
    wanted: int
    """The replicas this job would get without the cluster budget: its `Claim.wanted`."""


def decide_replicas(
    sample: Sample, workers: Workers, state: ScaleState, now: float, budget: int | None = None
) -> Decision:
    """How many worker pods the job should have now (see the module docstring for the rule).

    `budget` is this job's share of the cluster budget from `allocate_budget`; None means no cap.
    To compute a share, decide once with `budget=None` (its `wanted` is the job's claim), allocate,
    then decide again from the same `state` with the share.
    """
    if workers.scaler is Scaler.external:
        return Decision(
            replicas=None,
            reason="workers.scaler is external: its replicas are the external scaler's",
            state=ScaleState(),
            changed=False,
            wanted=0,
        )
    if sample.finished or sample.suspended:
        why = "finished" if sample.finished else "suspended"
        return _decided(0, why, ScaleState(current=0), state, wanted=0)

    outstanding = sample.outstanding
    recommended = math.ceil(outstanding / workers.tasks_per_replica)
    history = _remember(state.history, now, recommended, workers.scale_down_delay_seconds)
    highest = history[0][1]
    # HPA: rise to the recommendation at once; fall no lower than the window's highest.
    stabilized = min(max(state.current, recommended), highest)
    reason = f"backlog {outstanding} / {workers.tasks_per_replica} per replica → {recommended}"
    if stabilized > recommended:
        reason = (
            f"holding {stabilized} for the {workers.scale_down_delay_seconds} s scale-down window "
            f"(backlog now wants {recommended})"
        )
    wanted = stabilized
    if wanted > workers.max_replicas:
        wanted = workers.max_replicas
        reason += f", capped by maxReplicas {workers.max_replicas}"
    elif wanted < workers.min_replicas:
        wanted = workers.min_replicas
        reason += f", raised to minReplicas {workers.min_replicas}"
    replicas = wanted
    if budget is not None and budget < wanted:
        replicas = max(budget, 0)
        reason += f", capped by the cluster worker budget at {replicas}"
    return _decided(replicas, reason, ScaleState(current=replicas, history=history), state, wanted)


def deployment_replicas(workers: Workers, current: int) -> int | None:
    """The replicas a Deployment written by the operator carries: `current`, or None (the field left
    out) when an external scaler owns them, so creating or updating it never overrides the scaler."""
    return None if workers.scaler is Scaler.external else current


def _decided(replicas: int, reason: str, new: ScaleState, old: ScaleState, wanted: int) -> Decision:
    return Decision(
        replicas=replicas, reason=reason, state=new, changed=replicas != old.current, wanted=wanted
    )


def _remember(
    history: tuple[tuple[float, int], ...], now: float, recommended: int, window: float
) -> tuple[tuple[float, int], ...]:
    """The window after adding `recommended` at `now`: expired and dominated entries dropped."""
    kept = [(t, r) for t, r in history if now - t < window and r > recommended]
    return (*kept, (now, recommended))


@dataclass(frozen=True)
class Claim:
    """One job's wish for workers, as `allocate_budget` sees it."""

    key: str
    """namespace/name of the job."""
    priority: int
    """spec.priority: higher is served first."""
    created: float
    """Creation time (seconds since the epoch): among equal priorities the older job is served first."""
    wanted: int
    """The replicas the job would run without a budget (`Decision.wanted`)."""


def _rank(claim: Claim) -> tuple[int, float, str]:
    return (-claim.priority, claim.created, claim.key)


def allocate_budget(claims: Sequence[Claim], max_total: int) -> dict[str, int]:
    """Share `max_total` worker pods: highest priority first, then oldest, then by key.

    Each job in turn gets as much of what it wants as is left; every claim's key is in the result,
    with 0 when nothing is left. Strict priority means a busy high-priority job can starve a lower
    one; that is what priority is for, and the starved job's tasks wait in its queue.
    """
    seen: set[str] = set()
    for claim in claims:
        if claim.key in seen:
            raise ValueError(f"claim {claim.key!r} appears twice; give each job one claim")
        seen.add(claim.key)
    remaining = max(max_total, 0)
    shares: dict[str, int] = {}
    for claim in sorted(claims, key=_rank):
        share = min(max(claim.wanted, 0), remaining)
        shares[claim.key] = share
        remaining -= share
    return shares


def grant(claims: Sequence[Claim], held: Mapping[str, int], max_total: int, key: str) -> int:
    """How many workers job `key` may ask for now: its share (`allocate_budget`) when that is no more
    than it holds; otherwise what it holds plus the pods nobody holds and no job ranked ahead of it
    is still waiting for (its share minus what it holds), up to its share.

    `held`: the workers each job's Deployment asks for or has reserved (missing: 0). If every job
    asks for at most its grant, the sum of `held` never exceeds `max_total` (tests/unit/
    test_policy.py, test_grant_properties; tests/unit/test_budget_simulation.py over 1,000 jobs).
    """
    shares = allocate_budget(claims, max_total)
    mine, share = held.get(key, 0), shares[key]
    if share <= mine:
        return share
    ranked = sorted(claims, key=_rank)
    position = next(i for i, claim in enumerate(ranked) if claim.key == key)
    waiting_ahead = sum(max(shares[c.key] - held.get(c.key, 0), 0) for c in ranked[:position])
    free = max(max_total, 0) - sum(max(n, 0) for n in held.values())
    return mine + max(min(share - mine, free - waiting_ahead), 0)
