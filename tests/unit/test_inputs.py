"""Which input formats a job accepts: the installation's maximum and the job's choice within it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kompressor import inputs
from kompressor.crd import WEB_INPUT_FORMATS, InputFormat, Limits

FORMATS = st.sets(st.sampled_from(list(InputFormat)), min_size=1)


@given(requested=st.none() | FORMATS.map(sorted), maximum=FORMATS)
def test_a_job_never_accepts_more_than_the_installation(requested, maximum):
    accepted = inputs.accepted(requested, maximum)
    assert accepted <= maximum
    assert accepted <= set(requested if requested is not None else WEB_INPUT_FORMATS)
    refused = inputs.problems(requested, maximum)
    assert bool(refused) == (requested is not None and not set(requested) <= maximum)


def test_the_default_is_the_web_set_within_the_maximum():
    assert inputs.accepted(None, list(InputFormat)) == frozenset(WEB_INPUT_FORMATS)
    assert inputs.accepted(None, [InputFormat.jpeg, InputFormat.bmp]) == {InputFormat.jpeg}
    assert Limits().input_formats is None


def test_a_job_asking_beyond_the_maximum_is_told_which_setting_allows_it():
    (problem,) = inputs.problems([InputFormat.jpeg, InputFormat.heif, InputFormat.bmp], WEB_INPUT_FORMATS)
    assert problem.startswith("spec.limits.inputFormats: bmp, heif not allowed by this installation")
    assert "allowedInputFormats (KOMPRESSOR_ALLOWED_INPUT_FORMATS)" in problem
    assert inputs.problems([InputFormat.jpeg], WEB_INPUT_FORMATS) == []


def test_each_refusal_names_the_setting_that_would_allow_it():
    everything = list(InputFormat)
    assert "add bmp to spec.limits.inputFormats" in inputs.refusal(InputFormat.bmp, None, everything)
    beyond = inputs.refusal(InputFormat.bmp, [InputFormat.bmp], WEB_INPUT_FORMATS)
    assert "chart value allowedInputFormats (KOMPRESSOR_ALLOWED_INPUT_FORMATS)" in beyond
    assert "spec.limits.inputFormats" in beyond
    assert "never accepted" in inputs.refusal("EPS", None, everything)
    assert "a job may accept jpeg, png" in inputs.refusal("SGI", None, everything)


def test_eps_and_postscript_are_no_input_format():
    assert not {"eps", "ps"} & {f.value for f in InputFormat}
