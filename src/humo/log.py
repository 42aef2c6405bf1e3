"""Logging set-up for the command line: one call, at start-up, from :mod:`humo.cli`.

Library modules only do ``logger = logging.getLogger(__name__)``; they never configure handlers, so Prefect,
Lightning or a notebook can route humo's messages wherever they like.
"""

from __future__ import annotations

import logging
import os

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RankZeroFilter(logging.Filter):
    """Drop records on every distributed rank but 0 (ranks are read from the launcher's environment)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def setup_logging(level: str = "INFO") -> None:
    """Send humo's log records to stderr at ``level``, on rank 0 only; quiet noisy third-party loggers."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(RankZeroFilter())
    root = logging.getLogger("humo")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for noisy in ("urllib3", "matplotlib", "PIL", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
