"""Structured logs: one JSON object a line on stderr."""

import json
import logging
import sys
import time

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, fields: dict):
        super().__init__()
        self.fields = fields  # on every line (a worker's index)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.fields,
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level=logging.INFO, worker: int | None = None):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter({} if worker is None else {"worker": worker}))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
