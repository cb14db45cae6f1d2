"""Quiet by default: what the CLI and the chat show on the terminal, and what they keep to --verbose.

Library code logs through `logging`; this decides who hears it. Without
--verbose only warnings of our own reach the terminal: libraries' INFO chatter
and their warnings ("response was truncated", deprecation notices) stay quiet.

Left out: log files and structured logging.
"""

from __future__ import annotations

import logging
import os
import warnings

NOISY = ("dspy", "LiteLLM", "litellm", "httpx", "sentence_transformers", "transformers", "bm25s", "gradio")


def setup(verbose: bool = False) -> None:
    """Configure logging for a command-line or chat process."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        warnings.filterwarnings("ignore")
        quiet_libraries()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_libraries() -> None:
    """Libraries' own warnings (DSPy's "response was truncated", ...) only with --verbose.

    Call it again once DSPy is imported: its import sets its logger back to INFO."""
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        for noisy in NOISY:
            logging.getLogger(noisy).setLevel(logging.ERROR)
