"""Renditions, the planning half: spec.renditions validated at admission (bounds, key templates whose
outputs of one input would share a key), an input expanded into its (name, width, format) outputs
and keys, the task and result that carry them, and the ledger that counts each one once."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kompressor import keys
from kompressor.crd import MAX_OUTPUTS_PER_INPUT, SpecError, parse_spec
from kompressor.messages import JobRef, Outcome, RenditionResult, Result, SourceObject, Task, overall
from kompressor.renditions import outputs_per_input, plan_renditions
from kompressor_operator.ledger import Tally, _ledger_result, manifest_line
from kompressor_operator.planning import plan_task

JOB = JobRef(namespace="ns", name="site", uid="0123456789abcdef")
HERO = {"name": "hero", "widths": [640, 1280, 1920], "formats": ["avif", "webp", "jpeg"], "targetSSIM": 0.985}
THUMB = {"name": "thumb", "widths": [160, 320], "formats": ["webp"], "quality": 75}


def _spec(renditions=(HERO, THUMB), **destination):
    return parse_spec(
        {
            "source": {"s3": {"bucket": "raw", "prefix": "products/"}},
            "destination": {"s3": {"bucket": "web", "prefix": "r/"}, **destination},
            "renditions": list(renditions),
        }
    )


def _problems(**change) -> str:
    with pytest.raises(SpecError) as caught:
        _spec(**change)
    return str(caught.value)


def test_an_input_expands_into_every_width_and_format_widest_first_under_the_default_key():
    planned = plan_renditions(_spec(), SourceObject(bucket="raw", key="products/shoes/red.png"), "products/")
    assert [(p.name, p.width, p.output.format.value) for p in planned][:4] == [
        ("hero", 1920, "avif"),
        ("hero", 1920, "webp"),
        ("hero", 1920, "jpeg"),
        ("hero", 1280, "avif"),
    ]
    assert len(planned) == 3 * 3 + 2 == outputs_per_input(_spec())
    first = planned[0]
    # The default keeps the source's extension: red.jpg and red.png never share a key.
    assert first.key == "r/shoes/red.png-hero-1920w.avif"
    assert first.output.resize.max_width == 1920 and first.output.target_ssim == 0.985
    assert planned[-1].key == "r/shoes/red.png-thumb-160w.webp" and planned[-1].output.quality == 75


def test_the_issue_template_with_dir_at_the_top_drops_the_empty_segment():
    spec = _spec(key="{dir}/{stem}-{name}-{width}w.{ext}")
    planned = plan_renditions(spec, SourceObject(bucket="raw", key="products/photo.jpg"), "products/")
    assert {p.key for p in planned} >= {"r/photo-hero-640w.jpg", "r/photo-thumb-160w.webp"}


def test_a_template_that_gives_two_outputs_of_one_input_one_key_is_refused_naming_the_fix():
    assert "add {width}" in _problems(key="{dir}/{file}-{name}.{ext}")
    assert "add {name}" in _problems(
        renditions=[HERO, {"name": "b", "widths": [640], "formats": ["webp"]}], key="{stem}-{width}.{ext}"
    )
    assert "add {format}" in _problems(key="{stem}-{name}-{width}")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"renditions": [{**HERO, "widths": [640, 640]}]}, "widths must not repeat"),
        ({"renditions": [{**HERO, "formats": ["webp", "webp"]}]}, "formats must not repeat"),
        ({"renditions": [{**HERO, "formats": ["keep"]}]}, "formats.0"),
        ({"renditions": [{**HERO, "widths": [0]}]}, "widths.0"),
        ({"renditions": [{**HERO, "widths": [20000]}]}, "widths.0"),
        ({"renditions": [{**HERO, "widths": list(range(1, 18))}]}, "widths"),
        ({"renditions": [{**HERO, "quality": 80}]}, "quality or targetSSIM"),
        ({"renditions": [{**HERO, "formats": ["png", "webp"]}]}, "lossy"),
        ({"renditions": [HERO, HERO]}, "names must not repeat"),
        ({"renditions": [{**HERO, "name": "Hero"}]}, "name"),
        ({"renditions": []}, "renditions"),
        ({"key": "{dir}/{nope}.{ext}"}, "unknown placeholder {nope}"),
        ({"key": "{dir}/{stem:>4}.{ext}"}, "no format spec"),
        ({"key": "../{file}-{name}-{width}w.{ext}"}, "must stay under the prefix"),
        ({"key": "/{file}-{name}-{width}w.{ext}"}, "must stay under the prefix"),
    ],
)
def test_renditions_out_of_bounds_are_refused(change, problem):
    assert problem in _problems(**change)


def test_more_outputs_per_input_than_the_bound_are_refused():
    many = [{"name": f"r{i}", "widths": [100 + j for j in range(8)], "formats": ["webp"]} for i in range(5)]
    assert f"more than {MAX_OUTPUTS_PER_INPUT}" in _problems(renditions=many)


def test_output_and_renditions_together_are_refused_and_name_width_need_renditions():
    raw = {
        "source": {"s3": {"bucket": "raw"}},
        "destination": {"s3": {"bucket": "web"}},
        "output": {"format": "jpeg"},
        "renditions": [HERO],
    }
    with pytest.raises(SpecError, match="output or renditions"):
        parse_spec(raw)
    del raw["renditions"]
    raw["destination"]["key"] = "{stem}-{width}.{ext}"
    with pytest.raises(SpecError, match="need renditions"):
        parse_spec(raw)


def test_a_spec_with_renditions_survives_its_own_dump():
    """The operator stores the accepted spec as JSON and reads it back."""
    spec = _spec(cacheControl="public, max-age=31536000, immutable")
    assert parse_spec(json.loads(spec.model_dump_json(by_alias=True))) == spec


def test_an_output_job_may_keep_the_source_extension_with_a_template():
    raw = {
        "source": {"s3": {"bucket": "raw"}},
        "destination": {"s3": {"bucket": "web"}, "key": "{dir}/{file}.{ext}"},
        "output": {"format": "webp"},
    }
    spec = parse_spec(raw)
    keys_of = [
        plan_task(JOB, spec, 0, SourceObject(bucket="raw", key=k)).dest_key for k in ("a/p.jpg", "a/p.png")
    ]
    assert keys_of == ["a/p.jpg.webp", "a/p.png.webp"]
    # Without a template the keys are today's: one task, one output, no renditions.
    del raw["destination"]["key"]
    task = plan_task(JOB, parse_spec(raw), 0, SourceObject(bucket="raw", key="a/p.png"))
    assert task.dest_key == "a/p.webp" and task.renditions is None
    assert b"renditions" not in task.encode()


@settings(deadline=None)  # a shared, loaded machine: parse_spec may take longer than 200 ms
@given(
    names=st.lists(st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True), min_size=1, max_size=3, unique=True),
    widths=st.lists(st.integers(1, 4000), min_size=1, max_size=2, unique=True),
    formats=st.lists(st.sampled_from(["jpeg", "webp", "avif", "png"]), min_size=1, max_size=4, unique=True),
    path=st.from_regex(r"([a-z]{1,4}/){0,2}[a-z]{1,5}\.(jpg|png|webp)", fullmatch=True),
)
def test_an_admitted_spec_gives_each_output_of_an_input_its_own_key(names, widths, formats, path):
    spec = _spec(renditions=[{"name": n, "widths": widths, "formats": formats} for n in names])
    planned = plan_renditions(spec, SourceObject(bucket="raw", key=f"products/{path}"), "products/")
    assert len(planned) == outputs_per_input(spec) == len(names) * len(widths) * len(formats)
    assert len({p.key for p in planned}) == len(planned)
    assert all(p.key.startswith("r/") and "//" not in p.key for p in planned)


@given(
    st.from_regex(
        r"[^{}]{0,20}(\{(dir|file|stem|srcext|name|width|format|ext)\}[^{}]{0,5}){0,6}", fullmatch=True
    )
)
def test_any_template_of_known_placeholders_renders_a_key_without_empty_segments(template):
    keys.placeholders(template)
    key = keys.render(template, **keys.source_parts("a/b.jpg"), name="n", width=1, format="webp", ext="webp")
    assert "//" not in key and not key.startswith("/")


def test_a_task_with_renditions_is_a_one_output_task_per_rendition():
    spec = _spec()
    task = plan_task(JOB, spec, 7, SourceObject(bucket="raw", key="products/p.jpg", etag="e"))
    assert task.dest_key == "" and len(task.renditions) == 11
    assert task.dest_keys() == [r.key for r in task.renditions]
    assert Task.decode(task.encode()) == task
    one = task.for_rendition(task.renditions[0])
    assert (one.dest_key, one.output, one.renditions) == (
        task.renditions[0].key,
        task.renditions[0].output,
        None,
    )


def _rendition(outcome: Outcome, reason: str = "", **fields) -> RenditionResult:
    return RenditionResult(name="hero", width=640, format="webp", outcome=outcome, reason=reason, **fields)


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([("done", ""), ("skipped", "would_upscale")], ("done", "")),
        ([("skipped", "exists"), ("skipped", "would_upscale")], ("skipped", "exists")),
        ([("done", ""), ("failed", "encode_error")], ("failed", "encode_error")),
    ],
)
def test_an_input_ends_failed_if_any_rendition_failed_else_done_if_any_was_stored(outcomes, expected):
    renditions = [_rendition(Outcome(o), r) for o, r in outcomes]
    outcome, reason = overall(renditions)
    assert (outcome.value, reason) == expected


def test_the_ledger_counts_each_rendition_once_also_when_read_back():
    result = Result(
        job=JOB,
        id=2,
        outcome=Outcome.failed,
        source="s3://raw/p.jpg",
        reason="encode_error",
        bytes_in=100,
        bytes_out=10,
        renditions=[
            _rendition(Outcome.done, dest="s3://web/a", bytes_out=10, stored_width=640, stored_height=480),
            _rendition(Outcome.skipped, "would_upscale"),
            _rendition(Outcome.failed, "encode_error", message="x" * 1000),
        ],
        frames=1,
    )
    assert len(result.renditions[2].message) == 300
    assert Result.decode(result.encode()) == result
    line = manifest_line(result)
    assert line.renditions[0] == {
        "name": "hero",
        "width": 640,
        "format": "webp",
        "outcome": "done",
        "dest": "s3://web/a",
        "bytesOut": 10,
        "storedWidth": 640,
        "storedHeight": 480,
    }
    for counted in (result, _ledger_result(line.encode(), None)):
        tally = Tally()
        tally.add(counted)
        assert (tally.failed, dict(tally.renditions)) == (
            1,
            {Outcome.done: 1, Outcome.skipped: 1, Outcome.failed: 1},
        )
        # A failed input whose other renditions were stored counts their bytes, also after a restart.
        assert (tally.bytes_in, tally.bytes_out) == (100, 10)


def test_keep_animation_reaches_the_webp_outputs_only_and_changes_only_their_fingerprint():
    from kompressor_worker.storage import settings_fingerprint

    animated = {"name": "a", "widths": [320], "formats": ["webp", "jpeg"], "animation": "keep"}
    task = plan_task(JOB, _spec(renditions=[animated]), 0, SourceObject(bucket="raw", key="products/x.gif"))
    assert [(r.output.format.value, r.keep_animation) for r in task.renditions] == [
        ("webp", True),
        ("jpeg", False),
    ]
    still = plan_task(JOB, _spec(renditions=[{**animated, "animation": "firstFrame"}]), 0, task.source)
    webp, jpeg = (task.for_rendition(r) for r in task.renditions)
    webp_still, jpeg_still = (still.for_rendition(r) for r in still.renditions)
    assert settings_fingerprint(webp) != settings_fingerprint(webp_still)
    assert settings_fingerprint(jpeg) == settings_fingerprint(jpeg_still)


def test_status_counts_inputs_and_renditions_against_the_planned_outputs():
    from datetime import UTC, datetime

    from kompressor.crd import CompressionJobStatus, WorkerCounts
    from kompressor_operator.status import Counts, next_status

    counts = Counts(total=4, published=4, succeeded=2, skipped=1, renditions=(20, 3, 1), listing_done=True)
    status = next_status(CompressionJobStatus(), counts, _spec(), WorkerCounts(), datetime.now(UTC), 1, None)
    assert (status.succeeded, status.skipped, status.progress) == (2, 1, "3/4")
    assert status.renditions.model_dump() == {"succeeded": 20, "skipped": 3, "failed": 1, "progress": "23/44"}
    one_output = parse_spec({"source": {"s3": {"bucket": "raw"}}, "destination": {"s3": {"bucket": "web"}}})
    assert (
        next_status(
            CompressionJobStatus(), counts, one_output, WorkerCounts(), datetime.now(UTC), 1, None
        ).renditions
        is None
    )


def test_a_job_with_renditions_claims_no_saving_and_says_what_it_wrote():
    from datetime import UTC, datetime

    from kompressor.crd import CompressionJobStatus, WorkerCounts
    from kompressor_operator.progress import line
    from kompressor_operator.status import Counts, next_status

    # 9 renditions of a 1,000-byte source: 2,400 bytes written, "-140%" had it been called a saving.
    counts = Counts(total=1, published=1, succeeded=1, bytes_in=1000, bytes_out=2400, renditions=(9, 0, 0))
    status = next_status(CompressionJobStatus(), counts, _spec(), WorkerCounts(), datetime.now(UTC), 1, None)
    assert (status.bytes_in, status.bytes_out, status.saved) == (1000, 2400, "")
    assert "wrote 2.3 KiB" in line(status) and "saved" not in line(status)
    one_output = parse_spec({"source": {"s3": {"bucket": "raw"}}, "destination": {"s3": {"bucket": "web"}}})
    counts = Counts(total=1, published=1, succeeded=1, bytes_in=1000, bytes_out=400)
    status = next_status(
        CompressionJobStatus(), counts, one_output, WorkerCounts(), datetime.now(UTC), 1, None
    )
    assert status.saved == "60%" and "saved 600 B 60%" in line(status)
