"""planning.py: a URL manifest read as a job's inputs (a CSV with a `url` column or one URL per line,
and the ones that cannot be read as a URL list: the job then fails with ManifestInvalid), and the dry
run's estimate (inputs, bytes and CPU time at the measured rates, from planned tasks)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor.crd import CompressionJobSpec
from kompressor.messages import JobRef, SourceObject
from kompressor_operator.planning import (
    CPU_SECONDS_PER_MIB,
    MAX_URL_CHARS,
    TARGET_SSIM_FACTOR,
    TASK_OVERHEAD_CPU_SECONDS,
    ManifestError,
    estimate,
    parse_url_manifest,
    plan_tasks,
)


def test_a_csv_with_a_url_column_in_any_case_and_place():
    text = 'sku,URL ,title\n1,https://a.example/x.jpg,"a, b"\n\n# skipped\n2, http://b.example/y.png ,c\n'
    assert parse_url_manifest(text) == ["https://a.example/x.jpg", "http://b.example/y.png"]


def test_one_url_per_line_without_a_header():
    assert parse_url_manifest("https://a.example/1.jpg\n  https://a.example/2.jpg\n") == [
        "https://a.example/1.jpg",
        "https://a.example/2.jpg",
    ]
    assert parse_url_manifest("# only comments\n\n") == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("url\nhttps://a.example/1.jpg\nfile:///etc/passwd\nftp://x/y\n", "2 line(s) are not http(s) URLs"),
        ("url,title\n,missing\n", "1 line(s) are not http(s) URLs, first: ''"),
        (f"https://a.example/{'x' * MAX_URL_CHARS}.jpg\n", f"over {MAX_URL_CHARS} characters"),
    ],
)
def test_a_manifest_that_is_not_a_url_list_is_refused_naming_the_first_bad_line(text: str, problem: str):
    with pytest.raises(ManifestError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_url_manifest(text)


JOB = JobRef(namespace="local", name="j", uid="u")
MIB = 2**20


def spec(**output) -> CompressionJobSpec:
    return CompressionJobSpec.model_validate(
        {"source": {"s3": {"bucket": "raw"}}, "destination": {"s3": {"bucket": "web"}}, "output": output}
    )


def tasks(job_spec: CompressionJobSpec, *sources: SourceObject):
    return plan_tasks(JOB, job_spec, sources)


def s3(key: str, size: int | None) -> SourceObject:
    return SourceObject(bucket="raw", key=key, size=size)


def test_bytes_and_cpu_follow_the_output_format():
    webp = estimate(spec(format="webp"), tasks(spec(format="webp"), s3("a.jpg", MIB), s3("b.png", 3 * MIB)))
    assert (webp.inputs, webp.bytes, webp.unknown_sizes) == (2, 4 * MIB, 0)
    assert webp.cpu_seconds == pytest.approx(4 * CPU_SECONDS_PER_MIB["webp"] + 2 * TASK_OVERHEAD_CPU_SECONDS)
    avif = estimate(spec(format="avif"), tasks(spec(format="avif"), s3("a.jpg", MIB)))
    assert avif.cpu_seconds > 5 * estimate(spec(), tasks(spec(), s3("a.jpg", MIB))).cpu_seconds


def test_keep_costs_what_each_input_is_encoded_as():
    keep = spec(format="keep")
    jpeg, gif = estimate(keep, tasks(keep, s3("a.JPG", MIB))), estimate(keep, tasks(keep, s3("b.gif", MIB)))
    assert jpeg.cpu_seconds == pytest.approx(CPU_SECONDS_PER_MIB["jpeg"] + TASK_OVERHEAD_CPU_SECONDS)
    assert gif.cpu_seconds == pytest.approx(
        CPU_SECONDS_PER_MIB["png"] + TASK_OVERHEAD_CPU_SECONDS
    )  # kept as PNG


def test_automatic_quality_costs_several_encodes():
    auto = spec(format="webp", targetSSIM=0.985)
    cost = estimate(auto, tasks(auto, s3("a.jpg", MIB))).cpu_seconds
    assert cost == pytest.approx(TARGET_SSIM_FACTOR * CPU_SECONDS_PER_MIB["webp"] + TASK_OVERHEAD_CPU_SECONDS)


def test_urls_of_unknown_size_are_counted_but_not_guessed():
    urls = estimate(spec(), tasks(spec(), SourceObject(url="https://example.com/a.jpg"), s3("b.jpg", MIB)))
    assert (urls.inputs, urls.bytes, urls.unknown_sizes) == (2, MIB, 1)


@given(st.lists(st.integers(0, 10**9), max_size=30), st.integers(1, 64))
def test_more_processes_never_take_longer(sizes, processes):
    figures = estimate(spec(), tasks(spec(), *(s3(f"{i}.jpg", n) for i, n in enumerate(sizes))))
    assert figures.bytes == sum(sizes) and figures.inputs == len(sizes)
    assert figures.seconds(processes + 1) <= figures.seconds(processes) <= figures.cpu_seconds
