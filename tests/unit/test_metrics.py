"""Metric names and labels: every series names its job and namespace; an ended job's series go."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kompressor.messages import JobRef
from kompressor_operator.metrics import OperatorMetrics
from kompressor_worker.metrics import Metrics

SHOP = JobRef(namespace="shop", name="catalog", uid="u1")
LAB = JobRef(namespace="lab", name="catalog", uid="u2")


def series(registry) -> list[tuple[str, dict[str, str]]]:
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return [(sample.name, sample.labels) for family in families for sample in family.samples]


def test_two_jobs_of_one_name_in_two_namespaces_stay_apart_and_a_forgotten_job_leaves_nothing():
    metrics = OperatorMetrics()
    metrics.observe(SHOP, outstanding=7, desired=2)
    metrics.observe(LAB, outstanding=3, desired=1)
    metrics.scaled(SHOP, "up")
    outstanding = {
        (labels["namespace"], labels["compressionjob"]): value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        if family.name == "kompressor_outstanding_tasks"
        for _, labels, value, *_ in family.samples
    }
    assert outstanding == {("shop", "catalog"): 7, ("lab", "catalog"): 3}

    metrics.forget(SHOP)
    metrics.forget(SHOP)  # twice, and for series it never had (no scale-down): no error
    left = series(metrics.registry)
    assert left and all(labels["namespace"] == "lab" for _, labels in left)


def test_every_worker_series_names_its_job_and_namespace_and_counters_end_in_total():
    metrics = Metrics("shop", "catalog")
    metrics.task_ended("succeeded", "")
    metrics.task_retried("storage_unavailable")
    metrics.bytes_in.inc(10)
    metrics.bytes_out.inc(4)
    metrics.task_seconds.observe(0.3)
    metrics.observe_quality(80, 0.95)
    metrics.busy.set(1)
    found = series(metrics.registry)
    names = {name for name, _ in found}
    assert {"kompressor_input_bytes_total", "kompressor_output_bytes_total"} <= names
    assert "kompressor_task_duration_seconds_bucket" in names
    assert not any("bytes_in" in name or "bytes_out" in name for name in names)
    for name, labels in found:
        if not name.endswith("_created"):
            assert (labels["namespace"], labels["compressionjob"]) == ("shop", "catalog"), name


def test_a_finished_jobs_step_count_stays_until_it_is_deleted():
    metrics = OperatorMetrics()
    metrics.stepped(SHOP)
    metrics.stepped(SHOP)
    metrics.observe(SHOP, outstanding=0, desired=0)

    def steps() -> list[float]:
        return [
            value
            for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
            if family.name == "kompressor_steps"
            for name, _, value, *_ in family.samples
            if name == "kompressor_steps_total"
        ]

    metrics.forget(SHOP)  # finished: its gauges go, the count of its steps stays
    assert steps() == [2.0]
    assert {name for name, _ in series(metrics.registry)} <= {
        "kompressor_steps_total",
        "kompressor_steps_created",
    }
    metrics.forget(SHOP, deleted=True)
    assert steps() == [] and series(metrics.registry) == []
