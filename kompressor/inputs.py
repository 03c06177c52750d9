"""Which input formats a job accepts: the installation's maximum, and the job's choice within it.

Two settings, one rule, used by the operator (to refuse a job) and by the worker (to refuse an input):

- the installation's maximum, `allowedInputFormats` in the chart (KOMPRESSOR_ALLOWED_INPUT_FORMATS
  for the operator and every worker), the web set by default;
- a job's `spec.limits.inputFormats`, which must lie within that maximum; empty, it is the web set
  within the maximum.

A refusal names the setting that would allow the format. It must never decode anything or read the
environment: callers pass the settings they hold.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from kompressor.crd import WEB_INPUT_FORMATS, InputFormat

SETTING = "allowedInputFormats"
SETTING_ENV = "KOMPRESSOR_ALLOWED_INPUT_FORMATS"
JOB_FIELD = "spec.limits.inputFormats"
# Pillow hands these to Ghostscript, a PostScript interpreter: no setting allows them.
NEVER = frozenset({"EPS", "PS"})


def _names(formats: Collection[InputFormat]) -> str:
    return ", ".join(f.value for f in InputFormat if f in formats)


def accepted(
    requested: Sequence[InputFormat] | None, maximum: Collection[InputFormat]
) -> frozenset[InputFormat]:
    """The formats a job's inputs may be in: its choice (or the web set) within the maximum."""
    chosen = WEB_INPUT_FORMATS if requested is None else requested
    return frozenset(chosen) & frozenset(maximum)


def problems(requested: Sequence[InputFormat] | None, maximum: Collection[InputFormat]) -> list[str]:
    """Why a job's inputFormats are refused by this installation; [] when they are within it."""
    if requested is None:
        return []
    beyond = [f for f in InputFormat if f in requested and f not in maximum]
    if not beyond:
        return []
    return [
        f"{JOB_FIELD}: {_names(beyond)} not allowed by this installation (its {SETTING} are "
        f"{_names(maximum)}); an administrator adds them to the chart value {SETTING} ({SETTING_ENV}), "
        f"or remove them from the job"
    ]


def refusal(
    found: InputFormat | str, requested: Sequence[InputFormat] | None, maximum: Collection[InputFormat]
) -> str:
    """The message for an input whose format is not accepted, naming the setting that would allow
    it. `found` is an InputFormat, or Pillow's name of a format we do not offer (e.g. "EPS")."""
    if not isinstance(found, InputFormat):
        if found.upper() in NEVER:
            return f"{found} images are never accepted: Pillow hands them to Ghostscript (PostScript)"
        return f"{found} images are not supported; a job may accept {_names(InputFormat)}"
    if found in maximum:
        return f"{found.value} inputs are not accepted by this job: add {found.value} to {JOB_FIELD}"
    return (
        f"{found.value} inputs are not allowed by this installation: an administrator adds {found.value} "
        f"to the chart value {SETTING} ({SETTING_ENV}), then a job to {JOB_FIELD}"
    )
