"""The CompressionJob contract: the spec and status models, and the CRD generated from them.

`spec.py` holds the spec models and `parse_spec`, `status.py` the status models, `schema.py` the
CRD that `kompressor crd` prints (the only source of its schema: the chart and manifests hold
copies that a test compares with it). Every field carries a description (it becomes `kubectl
explain`), its default and its bounds. What a structural schema cannot say is checked by the model
validators, so the operator and local mode refuse the same specs. Import from here: the package's
names are its API.

It must never import a Kubernetes, broker or storage client.
"""

from __future__ import annotations

from kompressor.crd.schema import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    PRINTER_COLUMNS,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    crd,
)
from kompressor.crd.spec import (
    DEFAULT_INCLUDE,
    DEFAULT_QUALITY,
    REQUESTABLE_URL_PATTERN,
    WEB_INPUT_FORMATS,
    BucketName,
    ByteQuantity,
    CompressionJobSpec,
    Destination,
    Existing,
    Format,
    InputFormat,
    Limits,
    Notify,
    ObjectRef,
    Output,
    Prefix,
    Quantity,
    RequestableURL,
    Resize,
    Resources,
    S3Destination,
    S3Source,
    Scaler,
    Source,
    SpecError,
    Storage,
    Toleration,
    UrlSource,
    Workers,
    parse_byte_quantity,
    parse_spec,
)
from kompressor.crd.status import (
    FINISHED_PHASES,
    CompressionJobStatus,
    Condition,
    Phase,
    WorkerCounts,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_INCLUDE",
    "DEFAULT_QUALITY",
    "FINISHED_PHASES",
    "GROUP",
    "KIND",
    "PLURAL",
    "PRINTER_COLUMNS",
    "REQUESTABLE_URL_PATTERN",
    "SHORT_NAMES",
    "SINGULAR",
    "VERSION",
    "WEB_INPUT_FORMATS",
    "BucketName",
    "ByteQuantity",
    "CompressionJobSpec",
    "CompressionJobStatus",
    "Condition",
    "Destination",
    "Existing",
    "Format",
    "InputFormat",
    "Limits",
    "Notify",
    "ObjectRef",
    "Output",
    "Phase",
    "Prefix",
    "Quantity",
    "RequestableURL",
    "Resize",
    "Resources",
    "S3Destination",
    "S3Source",
    "Scaler",
    "Source",
    "SpecError",
    "Storage",
    "Toleration",
    "UrlSource",
    "WorkerCounts",
    "Workers",
    "crd",
    "parse_byte_quantity",
    "parse_spec",
]
