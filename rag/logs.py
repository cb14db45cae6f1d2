"""Quiet by default: what the CLI and the chat show on the terminal, and what they keep to --verbose.

Library code logs through `logging`; this decides who hears it. Without
--verbose only warnings of our own reach the terminal: libraries' INFO chatter
and their warnings ("response was truncated", deprecation notices) stay quiet.

Left out: log files and structured logging.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

NOISY = ("dspy", "LiteLLM", "litellm", "httpx", "sentence_transformers", "transformers", "bm25s", "gradio")


def setup(verbose: bool = False) -> None:
    """Configure logging for a command-line or chat process."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        warnings.filterwarnings("ignore")
        quiet_libraries()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _Steps(logging.StreamHandler):
    """Steps as indented lines, warnings as usual; on whatever sys.stderr is when a message is written."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(self)  # type: ignore[arg-type] - format() below

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO:
            return f"  {record.getMessage()}"
        return f"{record.levelname} {record.name}: {record.getMessage()}"


def show_steps(name: str) -> None:
    """Print the INFO messages of logger `name` (the steps of a long job, e.g. an index build) on stderr as
    indented lines, without --verbose (with it, the root logger prints them already)."""
    logger = logging.getLogger(name)
    if logging.getLogger().getEffectiveLevel() <= logging.INFO or any(isinstance(h, _Steps) for h in logger.handlers):
        return
    logger.addHandler(_Steps())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the root handler would print the INFO lines a second time


def quiet_libraries() -> None:
    """Libraries' own warnings (DSPy's "response was truncated", ...) only with --verbose.

    Call it again once DSPy is imported: its import sets its logger back to INFO."""
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        for noisy in NOISY:
            logging.getLogger(noisy).setLevel(logging.ERROR)
