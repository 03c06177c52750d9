"""Logs: one JSON object per line in containers, readable text in a terminal; every line names the
job the worker serves (`job`: namespace/name), so the logs of many jobs' pods can be told apart."""

from __future__ import annotations

import json
import logging
import sys
import time

from kompressor.logs import quiet_third_party


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, naming the job."""

    def __init__(self, job: str = "") -> None:
        super().__init__()
        self.job = job

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            **({"job": self.job} if self.job else {}),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(fmt: str = "auto", level: int | str = logging.INFO, job: str = "") -> None:
    """`auto` writes JSON unless stderr is a terminal; `job` (namespace/name) goes on every line."""
    handler = logging.StreamHandler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    # Kubernetes names hold no '%': the job goes into the format as it is.
    text = "%(asctime)s %(levelname)s %(name)s" + (f" [{job}]" if job else "") + ": %(message)s"
    handler.setFormatter(JsonFormatter(job) if use_json else logging.Formatter(text))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    quiet_third_party(level)
