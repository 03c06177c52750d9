"""The neverLarger rule as a pure function: what is stored is never larger than the input."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kompressor_worker.never_larger import Decision, NotSmaller, Source, Store, decide, why_not_original

FORMATS = ["jpeg", "png", "webp", "gif", "tiff", "avif", "bmp", "heif"]
OUTPUTS = ["jpeg", "webp", "avif", "png"]

SOURCES = st.builds(
    Source,
    format=st.sampled_from(FORMATS),
    output_format=st.sampled_from(OUTPUTS),
    resized=st.booleans(),
    reoriented=st.booleans(),
    frames=st.integers(1, 5),
    metadata_to_strip=st.booleans(),
)
SIZES = st.integers(1, 10**9)


def stored_bytes(decision: Decision, input_bytes: int, encoded_bytes: int) -> int:
    return {Store.encoded: encoded_bytes, Store.original: input_bytes, Store.nothing: 0}[decision.store]


@given(input_bytes=SIZES, encoded_bytes=SIZES, source=SOURCES)
def test_never_larger_stores_no_more_bytes_than_the_input(
    input_bytes: int, encoded_bytes: int, source: Source
) -> None:
    decision = decide(True, input_bytes, encoded_bytes, source)
    assert stored_bytes(decision, input_bytes, encoded_bytes) <= input_bytes
    if decision.store is Store.nothing:
        assert decision.message and f"({input_bytes} bytes)" in decision.message


@given(input_bytes=SIZES, encoded_bytes=SIZES, source=SOURCES)
def test_the_original_only_when_it_is_the_output_asked_for(
    input_bytes: int, encoded_bytes: int, source: Source
) -> None:
    decision = decide(True, input_bytes, encoded_bytes, source)
    if decision.store is Store.original:
        assert source.format == source.output_format and source.frames == 1
        assert not (source.resized or source.reoriented or source.metadata_to_strip)
    if encoded_bytes < input_bytes:
        assert decision.store is Store.encoded


@given(input_bytes=SIZES, encoded_bytes=SIZES, source=SOURCES)
def test_without_never_larger_the_encoded_output_is_stored(
    input_bytes: int, encoded_bytes: int, source: Source
) -> None:
    assert decide(False, input_bytes, encoded_bytes, source) == Decision(Store.encoded)


def equivalent(output_format: str, **changes) -> Source:
    fields = dict(
        format=output_format,
        output_format=output_format,
        resized=False,
        reoriented=False,
        frames=1,
        metadata_to_strip=False,
    )
    return Source(**(fields | changes))


@pytest.mark.parametrize("fmt", OUTPUTS)
def test_each_promise_keeps_the_original_out(fmt: str):
    assert why_not_original(equivalent(fmt)) is None
    assert decide(True, 100, 100, equivalent(fmt)).store is Store.original  # equal is not smaller
    other = "png" if fmt != "png" else "jpeg"
    cases = {
        "format": (equivalent(fmt, format=other), f"the input is {other}, not {fmt}"),
        "resize": (equivalent(fmt, resized=True), "larger than the resize box"),
        "orientation": (equivalent(fmt, reoriented=True), "orientation"),
        "frames": (equivalent(fmt, frames=3), "3 frames"),
        "metadata": (equivalent(fmt, metadata_to_strip=True), "stripMetadata"),
    }
    for source, words in cases.values():
        decision = decide(True, 100, 101, source)
        assert decision.store is Store.nothing and words in decision.message


def test_not_smaller_crosses_a_process_boundary_intact():
    error = pickle.loads(pickle.dumps(NotSmaller("the jpeg output (9 bytes) ...")))
    assert (error.reason, error.message) == ("not_smaller", "the jpeg output (9 bytes) ...")
