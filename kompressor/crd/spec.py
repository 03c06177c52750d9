"""The CompressionJob spec: what a user asks for, validated as the operator and local mode both read it.

Every field carries a description (it becomes `kubectl explain`), its default and its bounds. What a
structural schema cannot say is checked by the model validators here, so the operator and local
mode refuse the same specs; `parse_spec` turns a refusal into one line per field.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import posixpath
import re
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from kompressor import keys
from kompressor.crd.base import CamelModel
from kompressor.quantity import parse_byte_quantity

DEFAULT_INCLUDE = ["*.jpg", "*.jpeg", "*.png", "*.webp", "*.gif", "*.tif", "*.tiff", "*.avif"]
DEFAULT_QUALITY = 80


def _safe_prefix(value: str) -> str:
    """An object-key prefix must stay inside its bucket: no absolute path, no `..` segment."""
    if value.startswith("/"):
        raise ValueError(f"prefix {value!r} must not start with '/'")
    if ".." in value.split("/"):
        raise ValueError(f"prefix {value!r} must not contain a '..' segment")
    return value


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
REQUESTABLE_URL_PATTERN = (
    rf"^https?://(?:\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\]|{_LABEL}(?:\.{_LABEL})*\.?)(?::{_PORT})?(?:[/?][!-~]*)?$"
)


"""An http(s) URL a client can request: a host name of DNS labels or a bracketed IPv6 address, no
user info, a port from 1 to 65535, and a path and query of printable ASCII without spaces (a
space, a control character or a byte beyond ASCII makes http.client refuse the request line)."""


def _requestable_url(value: str) -> str:
    """REQUESTABLE_URL_PATTERN, with a message that says the rule, and what it cannot say: that a
    bracketed address parses."""
    try:
        if not re.match(REQUESTABLE_URL_PATTERN, value):
            raise ValueError(
                "must be an http(s) URL with a host name or [IPv6 address], no user info, a port from "
                "1 to 65535, and a path of printable ASCII without spaces"
            )
        host = urlsplit(value).hostname or ""
        if ":" in host:
            ipaddress.IPv6Address(host)
    except ValueError as exc:
        raise ValueError(f"{value!r} cannot be requested: {exc}") from None
    return value


RequestableURL = Annotated[
    str,
    Field(max_length=2048, json_schema_extra={"pattern": REQUESTABLE_URL_PATTERN}),
    AfterValidator(_requestable_url),
]
BucketName = Annotated[
    str,
    Field(
        min_length=3,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
        description="S3 bucket name.",
    ),
]
Prefix = Annotated[
    str,
    Field(max_length=512, description="Key prefix inside the bucket; empty for the whole bucket."),
    AfterValidator(_safe_prefix),
]


class S3Source(CamelModel):
    """Images under a prefix of an S3 bucket."""

    bucket: BucketName
    prefix: Prefix = ""
    include: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=lambda: list(DEFAULT_INCLUDE),
        min_length=1,
        max_length=64,
        description="Shell-style globs matched case-insensitively against the key's file name; "
        "an object matching any of them is an input.",
    )

    def matches(self, key: str) -> bool:
        name = posixpath.basename(key).lower()
        return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in self.include)


class ObjectRef(CamelModel):
    """One object in an S3 bucket."""

    bucket: BucketName
    key: str = Field(min_length=1, max_length=1024, description="Object key.")


class UrlSource(CamelModel):
    """Images fetched over http(s): a manifest object in S3, or a short inline list."""

    manifest: ObjectRef | None = Field(
        default=None,
        description="A CSV with a `url` column, or one URL per line, stored in S3.",
    )
    items: list[Annotated[str, Field(pattern=r"^https?://", max_length=2048)]] | None = Field(
        default=None,
        max_length=1000,
        description="An inline list of http(s) URLs (at most 1000; use a manifest beyond that).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> UrlSource:
        if (self.manifest is None) == (self.items is None):
            raise ValueError("set exactly one of manifest or items")
        return self


class Source(CamelModel):
    """Where the input images are: exactly one of s3 or urls."""

    s3: S3Source | None = Field(default=None, description="Images under an S3 prefix.")
    urls: UrlSource | None = Field(
        default=None,
        description="Images fetched from http(s) URLs. Outputs' metadata, results and the manifest name "
        "each by its URL without user info, query or fragment, which may hold credentials.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        if (self.s3 is None) == (self.urls is None):
            raise ValueError("set exactly one of s3 or urls")
        return self


class S3Destination(CamelModel):
    """An S3 bucket and prefix that outputs are written under."""

    bucket: BucketName
    prefix: Prefix = ""


# The enums of the spec have no docstring: pydantic would publish it in the CRD as the enum's
# description (changing the generated CRD); each field's description says what its values do.
class Existing(StrEnum):
    skip = "skip"
    overwrite = "overwrite"


class Destination(CamelModel):
    """Where outputs go and what to do with outputs that already exist."""

    s3: S3Destination = Field(description="Outputs are written under this bucket and prefix.")
    existing: Existing = Field(
        default=Existing.skip,
        description="skip: an output already made from the same source version and settings is kept "
        "and the input counted as skipped, so re-running a job does no work twice; overwrite: always "
        "compress again.",
    )
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=keys.MAX_TEMPLATE_CHARS,
        description="Output key template below s3.prefix, with placeholders {dir}, {file} (photo.png), "
        "{stem} (photo), {srcext} (png), {format}, {ext} (jpg for jpeg) and, with renditions, {name} "
        "and {width}; empty path segments are dropped. Empty: {dir}/{stem}.{ext} with output (the "
        f"input's extension for keep), {keys.DEFAULT_RENDITION_KEY} with renditions (keeping the "
        "source's extension, so photo.jpg and photo.png never share a key). Templates that give two "
        "outputs of one input one key are refused.",
    )
    cache_control: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[ -~]+$",
        description='Cache-Control stored with every output, e.g. "public, max-age=31536000, '
        'immutable"; empty stores none.',
    )
    copy_metadata: bool = Field(
        default=False,
        description="Copy the S3 source's user metadata (x-amz-meta-*) onto its outputs; kompressor's "
        "own kompressor-* keys win. S3 keeps at most 2 KB of user metadata: keys that do not fit beside "
        "kompressor's own are left out, in key order, and the output's manifest message names them. "
        "Off by default: a source's metadata may be private and the outputs public. URL sources have "
        "none.",
    )

    @field_validator("key")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        if value is not None:
            keys.placeholders(value)
            if value.startswith("/") or ".." in value.split("/"):
                raise ValueError(
                    f"key template {value!r} must stay under the prefix: no leading '/', no '..'"
                )
        return value


class Storage(CamelModel):
    """How to reach the S3-compatible storage holding sources and outputs."""

    endpoint_url: str | None = Field(
        default=None,
        alias="endpointURL",
        pattern=r"^https?://",
        max_length=2048,
        description="S3 endpoint, e.g. http://seaweedfs:8333; empty for the operator's own (AWS S3 when it "
        "has none). Any other endpoint needs credentialsSecret, and the operator refuses it (the job "
        "fails, StorageEndpointRefused) unless its addresses are in the admin's endpoint allow-list.",
    )
    region: str = Field(default="us-east-1", min_length=1, max_length=64, description="S3 region.")
    credentials_secret: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of a Secret in the job's namespace with keys accessKeyId and "
        "secretAccessKey; empty to use the operator's default storage credentials, which only ever go "
        "to the operator's own endpoint.",
    )


class Format(StrEnum):
    jpeg = "jpeg"
    webp = "webp"
    avif = "avif"
    png = "png"
    keep = "keep"


class InputFormat(StrEnum):
    """Input formats a job may accept. The first six are the web set, the default; the others are
    opt-in (an installation's allowedInputFormats, then a job's limits.inputFormats), because
    Pillow's rarer decoders are where its security fixes land. EPS/PS are never offered: Pillow
    hands them to Ghostscript."""

    jpeg = "jpeg"
    png = "png"
    webp = "webp"
    gif = "gif"
    tiff = "tiff"
    avif = "avif"
    bmp = "bmp"
    tga = "tga"
    ico = "ico"
    pnm = "pnm"  # PPM, PGM, PBM and PNM
    jpeg2000 = "jpeg2000"
    psd = "psd"  # the flattened composite, not the layers
    heif = "heif"  # HEIC/HEIF, through pillow-heif


WEB_INPUT_FORMATS = (
    InputFormat.jpeg,
    InputFormat.png,
    InputFormat.webp,
    InputFormat.gif,
    InputFormat.tiff,
    InputFormat.avif,
)


class Resize(CamelModel):
    """Fit the image inside this box, keeping its aspect ratio; never upscale."""

    max_width: int | None = Field(default=None, ge=1, le=65535, description="Largest output width in pixels.")
    max_height: int | None = Field(
        default=None, ge=1, le=65535, description="Largest output height in pixels."
    )


class Output(CamelModel):
    """The output format and its settings."""

    format: Format = Field(
        default=Format.webp, description="Output format; keep writes the input's own format."
    )
    quality: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=f"Encoder quality 1..100 (default {DEFAULT_QUALITY}); not with targetSSIM.",
    )
    target_ssim: float | None = Field(
        default=None,
        alias="targetSSIM",
        ge=0.90,
        le=0.999,
        description="Automatic quality: the lowest quality whose output keeps at least this SSIM "
        "(luma) against the resized source, and chroma SSIM 0.95 (jpeg and avif: 4:2:0 chroma, "
        "else 4:4:4); not with quality. For jpeg, webp and avif.",
    )
    resize: Resize = Field(default_factory=Resize, description="Fit inside a box; never upscale.")
    strip_metadata: bool = Field(
        default=True,
        description="Drop EXIF and XMP (orientation is applied to the pixels first; the ICC profile "
        "is kept).",
    )
    never_larger: bool = Field(
        default=True,
        description="Never store an object larger than its input: the encoded output when it is "
        "smaller; else the input's own bytes when they already are the output asked for (this format, "
        "no resize or orientation to apply, one frame, no EXIF/XMP that stripMetadata drops), under the "
        "planned key and marked storedOriginal in the manifest; else nothing: the input is skipped with "
        "reason not_smaller. A skip rather than the source under another key, because a CDN bucket is "
        "read by URLs made from the job's format: every object there keeps the job's promises and the "
        "source stays the one to serve.",
    )

    @model_validator(mode="after")
    def _quality_or_target(self) -> Output:
        if self.quality is not None and self.target_ssim is not None:
            raise ValueError("set quality or targetSSIM, not both")
        if self.target_ssim is not None and self.format in (Format.png, Format.keep):
            raise ValueError("targetSSIM needs a lossy format: jpeg, webp or avif")
        return self

    @property
    def effective_quality(self) -> int:
        return DEFAULT_QUALITY if self.quality is None else self.quality


MAX_RENDITIONS = 8
MAX_RENDITION_WIDTHS = 16
MAX_OUTPUTS_PER_INPUT = 32
MAX_RENDITION_WIDTH = 16383  # WebP's largest side; the widest any format here can encode


class RenditionFormat(StrEnum):
    jpeg = "jpeg"
    webp = "webp"
    avif = "avif"
    png = "png"


class Animation(StrEnum):
    first_frame = "firstFrame"
    keep = "keep"


class Rendition(CamelModel):
    """A named set of outputs of each input: every width in every format, all from one decode."""

    name: str = Field(
        min_length=1,
        max_length=32,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Names the set in keys ({name}) and the index, e.g. hero or thumb.",
    )
    widths: list[Annotated[int, Field(ge=1, le=MAX_RENDITION_WIDTH)]] = Field(
        min_length=1,
        max_length=MAX_RENDITION_WIDTHS,
        description="Output widths in pixels, each with the source's aspect ratio. A width above the "
        "source's (as displayed) is never upscaled: that output is skipped with reason would_upscale.",
    )
    formats: list[RenditionFormat] = Field(
        min_length=1, max_length=len(RenditionFormat), description="Output formats, each at every width."
    )
    quality: int | None = Field(
        default=None, ge=1, le=100, description=f"As output.quality (default {DEFAULT_QUALITY})."
    )
    target_ssim: float | None = Field(
        default=None,
        alias="targetSSIM",
        ge=0.90,
        le=0.999,
        description="As output.targetSSIM, per width and format; only with lossy formats.",
    )
    strip_metadata: bool = Field(default=True, description="As output.stripMetadata.")
    never_larger: bool = Field(default=True, description="As output.neverLarger, per output.")
    animation: Animation = Field(
        default=Animation.first_frame,
        description="firstFrame: an animated input (GIF, WebP) gives its first frame; keep: its webp "
        "outputs are animated WebP, every frame resized (its other formats still take the first "
        "frame). The manifest gives each input's frame count either way.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Rendition:
        for what, values in (("widths", self.widths), ("formats", self.formats)):
            if len(set(values)) != len(values):
                raise ValueError(f"rendition {self.name}: {what} must not repeat")
        if self.quality is not None and self.target_ssim is not None:
            raise ValueError(f"rendition {self.name}: set quality or targetSSIM, not both")
        if self.target_ssim is not None and RenditionFormat.png in self.formats:
            raise ValueError(f"rendition {self.name}: targetSSIM needs lossy formats: jpeg, webp or avif")
        return self

    def outputs(self) -> list[tuple[int, Output]]:
        """Each (width, output settings) of the set, widest first, formats in their listed order."""
        return [
            (
                width,
                Output(
                    format=Format(fmt.value),
                    quality=self.quality,
                    target_ssim=self.target_ssim,
                    resize=Resize(max_width=width),
                    strip_metadata=self.strip_metadata,
                    never_larger=self.never_larger,
                ),
            )
            for width in sorted(self.widths, reverse=True)
            for fmt in self.formats
        ]


ByteQuantity = Annotated[
    int | str,
    AfterValidator(parse_byte_quantity),
    Field(description="Bytes, as a number or a quantity such as 50Mi."),
]


class Limits(CamelModel):
    """Bounds on each task and on the job's footprint in the broker."""

    max_input_bytes: ByteQuantity = Field(
        default="50Mi",
        description="Largest input accepted, enforced while downloading (e.g. 50Mi).",
    )
    max_pixels: int = Field(
        default=100_000_000,
        ge=1,
        le=2_000_000_000,
        description="Largest decoded image (width × height) accepted; larger inputs fail with "
        "too_many_pixels.",
    )
    task_timeout_seconds: int = Field(
        default=120,
        ge=1,
        le=1500,
        description="A task running longer is killed and retried (kept under the broker's 30 min "
        "consumer timeout).",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Deliveries of a task before it is dead-lettered as failed."
    )
    input_formats: list[InputFormat] | None = Field(
        default=None,
        min_length=1,
        max_length=len(InputFormat),
        description="Input formats this job accepts; an input in another format fails with "
        "unsupported_format. Empty: the web set (jpeg, png, webp, gif, tiff, avif) within the "
        "installation's allowedInputFormats. Opt-in: bmp, tga, ico, pnm (PPM/PGM/PBM), jpeg2000, psd "
        "(flattened), heif (HEIC); each must also be in the installation's allowedInputFormats (chart "
        "value, KOMPRESSOR_ALLOWED_INPUT_FORMATS), else the job is refused. EPS/PS never are.",
    )
    max_outstanding: int = Field(
        default=50_000,
        ge=1,
        le=1_000_000,
        description="Most tasks queued at once for this job; the fan-out tops up as results return.",
    )

    @field_validator("max_input_bytes")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1 byte")
        return value


Quantity = Annotated[int | str, Field(description="A Kubernetes quantity such as 500m, 2 or 1Gi.")]


class Resources(CamelModel):
    """Kubernetes resource requests and limits of each worker container."""

    model_config = ConfigDict(alias_generator=None)

    requests: dict[str, Quantity] = Field(
        default_factory=lambda: {"cpu": "1", "memory": "1Gi"}, description="Resource requests."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=lambda: {"cpu": "2", "memory": "2Gi"},
        description="Resource limits; the CPU limit sizes each pod's process pool.",
    )


class Toleration(CamelModel):
    """A Kubernetes toleration of worker pods (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=317, description="Taint key; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value, with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="With NoExecute: how long the pod stays bound after the taint appears."
    )


class Scaler(StrEnum):
    builtin = "builtin"
    external = "external"


class Workers(CamelModel):
    """How much compute the job may use and how it follows the backlog."""

    scaler: Scaler = Field(
        default=Scaler.builtin,
        description="builtin: the operator scales the worker Deployment on the backlog, within the "
        "cluster's worker budget; external: the operator creates the Deployment but never sets its "
        "replicas (a KEDA ScaledObject or an HPA does, from status.queue or status.backlog), the "
        "cluster budget and min/maxReplicas do not apply, and suspend only reports Suspended.",
    )

    min_replicas: int = Field(default=0, ge=0, le=1000, description="Fewest worker pods, also when idle.")
    max_replicas: int = Field(default=20, ge=1, le=1000, description="Most worker pods.")
    tasks_per_replica: int = Field(
        default=40, ge=1, le=100_000, description="Target backlog (queued + in flight) per worker pod."
    )
    processes_per_pod: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Compression processes per pod; 0 sizes it from the container's CPU limit.",
    )
    scale_down_delay_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="Stabilization window: scale down only to the highest replica count recommended "
        "during this many seconds.",
    )
    resources: Resources = Field(default_factory=Resources, description="Worker container resources.")
    # Placement and priority overrides of the chart's worker.* defaults, merged by the operator's
    # builders.worker_pod_settings: maps merge key by key, lists and whole objects replace.
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(
        default=None,
        description="Node labels worker pods must match, merged over the chart's worker.nodeSelector "
        "key by key (this job's value wins): a job adds a constraint without restating the defaults.",
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        max_length=64,
        description="Tolerations of worker pods; when set, they replace the chart's "
        "worker.tolerations (a list has no key to merge by, and a job must be able to drop one).",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Affinity of worker pods (core/v1 Affinity). Each of nodeAffinity, podAffinity "
        "and podAntiAffinity set here replaces the same one of the chart's worker.affinity; the "
        "others are kept.",
        json_schema_extra={
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                kind: {
                    "type": "object",
                    "description": f"core/v1 {kind[0].upper()}{kind[1:]}.",
                    "x-kubernetes-preserve-unknown-fields": True,
                }
                for kind in ("nodeAffinity", "podAffinity", "podAntiAffinity")
            },
        },
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PriorityClass of worker pods, instead of the chart's worker.priorityClassName.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = Field(
        default=None,
        description="Log level of this job's workers, instead of the chart's worker.logLevel (DEBUG also "
        "lets the S3 and AMQP libraries' own records through).",
    )

    @field_validator("affinity")
    @classmethod
    def _affinity_kinds(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        unknown = set(value or {}) - {"nodeAffinity", "podAffinity", "podAntiAffinity"}
        if unknown:
            raise ValueError(
                f"unknown affinity {', '.join(sorted(unknown))}: use nodeAffinity, "
                "podAffinity or podAntiAffinity"
            )
        return value

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Workers:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must not exceed maxReplicas ({self.max_replicas})"
            )
        return self


class Notify(CamelModel):
    """A webhook told when the job finishes."""

    webhook_url: RequestableURL = Field(
        alias="webhookURL",
        description="http(s) URL POSTed once the finished status is stored (no user info; a port "
        "from 1 to 65535; printable ASCII without spaces).",
    )
    secret_ref: str | None = Field(
        default=None,
        max_length=253,
        description="Name of a Secret whose key `hmacKey` signs each delivery the Standard Webhooks "
        "way (headers webhook-id, webhook-timestamp, webhook-signature); when it or the key is "
        "missing or empty, nothing is sent.",
    )


class CompressionJobSpec(CamelModel):
    """What to compress, where to put it, and how much compute to use."""

    source: Source = Field(description="Where the input images are.")
    destination: Destination = Field(description="Where the outputs go.")
    storage: Storage = Field(default_factory=Storage, description="How to reach S3.")
    output: Output = Field(
        default_factory=Output, description="Output format and settings: one output per input."
    )
    renditions: list[Rendition] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_RENDITIONS,
        description="Instead of output: many outputs per input (widths × formats per set), all from one "
        f"decode; at most {MAX_OUTPUTS_PER_INPUT} outputs per input. See docs/renditions.md.",
    )
    limits: Limits = Field(default_factory=Limits, description="Per-task and per-job bounds.")
    workers: Workers = Field(default_factory=Workers, description="Worker pods and autoscaling.")
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="Higher wins when the cluster-wide worker budget is short.",
    )
    suspend: bool = Field(
        default=False,
        description="true: keep the queue and scale the workers to 0 (with workers.scaler external, "
        "pause your scaler instead); false: resume.",
    )
    notify: Notify | None = Field(default=None, description="Webhook called when the job finishes.")
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the job this long after it finishes; empty keeps it."
    )

    @model_validator(mode="after")
    def _renditions_keys(self) -> CompressionJobSpec:
        template = self.destination.key
        if not self.renditions:
            used = keys.placeholders(template) if template else set()
            if used & keys.RENDITION_PLACEHOLDERS:
                raise ValueError("destination.key: {name} and {width} need renditions")
            return self
        if self.output != Output():  # not model_fields_set: a dumped spec holds the default output
            raise ValueError("set output or renditions, not both")
        names = [rendition.name for rendition in self.renditions]
        if len(set(names)) != len(names):
            raise ValueError("renditions: names must not repeat")
        outputs = [(r.name, width, out.format.value) for r in self.renditions for width, out in r.outputs()]
        if len(outputs) > MAX_OUTPUTS_PER_INPUT:
            raise ValueError(
                f"renditions: {len(outputs)} outputs per input (widths × formats, summed), more than "
                f"{MAX_OUTPUTS_PER_INPUT}"
            )
        problems = keys.collisions(template or keys.DEFAULT_RENDITION_KEY, outputs)
        if problems:
            raise ValueError("destination.key: " + "; ".join(problems))
        return self


class SpecError(ValueError):
    """An invalid CompressionJob spec; each line names a field and the rule it breaks."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(["spec", *(str(part) for part in error["loc"])])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "required field is missing"
    return f"{path}: {message}"


def parse_spec(raw: Any) -> CompressionJobSpec:
    """Validate a spec as a mapping; a SpecError names each invalid field and its rule."""
    if not isinstance(raw, dict):
        raise SpecError([f"spec: must be a mapping, got {type(raw).__name__}"])
    try:
        return CompressionJobSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError([_describe(error) for error in exc.errors()]) from None
