"""The `rag` command: a thin layer over the library.

Subcommands: index, papers, search, ask, batch, chat, mcp, eval, optimize, feedback, settings. Options fall back to
`RAG_*` environment variables (see `rag settings`). Expected errors print one
line on stderr and exit 1; bad usage exits 2. `--json` output shapes are the
contracts in docs/json.md and only ever gain fields. Human-readable output shows
corpus and model text without terminal control sequences (a title cannot recolour
or retitle the terminal); JSON output escapes every control character.
"""

from __future__ import annotations

import argparse
import sys

from rag import logs
from rag.cli import ask, batch, eval, feedback, index
from rag.cli.common import clean
from rag.cli.parser import build_parser
from rag.errors import RagError


def cmd_settings(args: argparse.Namespace) -> int:
    from rag.settings import ENV_PREFIX, Settings

    for name, value, help in Settings.load().describe():
        shown = "***" if name in ("api_key", "auth") and value else value
        print(f"{ENV_PREFIX}{name.upper():<18} = {shown!s:<40} {help}")
    return 0


# Command name -> what runs it.
COMMANDS = {"index": index.cmd_index, "papers": index.cmd_papers, "search": ask.cmd_search, "ask": ask.cmd_ask,
            "batch": batch.cmd_batch, "chat": ask.cmd_chat, "mcp": ask.cmd_mcp, "eval": eval.cmd_eval,
            "optimize": eval.cmd_optimize, "feedback": feedback.cmd_feedback,
            "settings": cmd_settings}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(getattr(args, "verbose", False))
    try:
        return COMMANDS[args.command](args)
    except RagError as e:
        print(f"error: {clean(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
