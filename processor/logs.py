"""Structured logs of `refund-processor run`: one JSON object per line on stderr.

Our own events are structlog calls with key-values (topic, partition, offset, order_id...);
they travel through the standard `logging` module, as do the records of libraries that
use it, and one formatter renders both: every line a collector reads is JSON.

No secrets: tracebacks are rendered without their frames' local variables (a Kafka
client's config dict holds passwords in clear); settings are logged as
`model_dump(mode="json")`, which masks them.
"""

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import Processor

__all__ = ["configure"]


def configure(stream: TextIO = sys.stderr, level: int = logging.INFO) -> None:
    """Sends structlog's and the standard library's records to `stream` as JSON lines.

    Call it once, before the first log call: loggers are cached on first use. A program
    that embeds the `Runner` (a demo, a benchmark) calls it too, or structlog's default
    (coloured console output on stdout) applies.
    """
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.ExceptionRenderer(
                    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
                ),
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
