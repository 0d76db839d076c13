"""Logging setup for every service: one line per record on stderr, level from the service config."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO", component: str = "servelane") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
