"""`rag batch`: a file of questions answered here, by remote workers, or on a Ray cluster."""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from rag.cli.common import open_pipeline, print_json, say, settings_from
from rag.errors import RagError


def cmd_batch(args: argparse.Namespace) -> int:
    from rag.batch import inputs
    from rag.batch.output import Output

    if args.workers is not None and args.workers < 1:
        raise RagError(f"--workers must be at least 1, got {args.workers}")
    # input used as output (the JSONL or the flat CSV beside it): refused before any work
    inputs.check_paths(args.input, Path(args.output), _csv_output(args) if args.format == "csv" else None)
    stream = inputs.open_input(args.input)
    peek = stream.peek(1)[:200] if hasattr(stream, "peek") else b""
    fmt = inputs.detect_format(args.input, args.input_format, peek)
    rows = inputs.read_rows(stream, fmt, Path(args.input).name if args.input != "-" else "stdin")
    first = next(rows, None)  # a CSV without a question column fails here, before any model work
    rows = itertools.chain([first] if first else [], rows)
    out = Output(args.output, overwrite=args.overwrite)  # an unwritable path, or another run on it, fails here too
    try:
        if settings_from(args).engine == "ray":
            return _batch_ray(args, rows, out, fmt)
        pipe = open_pipeline(args, need_lm=True)
        workers = args.workers or 1
        if workers > 1 and pipe.settings.lm == "local":
            say("note: the local model answers one question at a time; --workers applies to remote backends")
            workers = 1
        return _run_batch(args, rows, out, fmt, pipe.ask, workers)
    finally:
        out.close()  # the lock goes with it, whatever failed


def _csv_output(args: argparse.Namespace) -> Path:
    """The flat CSV that `--format csv` writes beside the JSONL output."""
    return Path(args.output).with_suffix(".csv")


def _batch_ray(args: argparse.Namespace, rows, out, fmt: str) -> int:
    """`rag batch --engine ray`: the index is checked (or built) here; each Ray worker loads the pipeline."""
    from rag.distributed import ray_asker

    pipe = open_pipeline(args, need_lm=False)
    with ray_asker(pipe.settings.replace(ray_workers=args.workers), index=pipe.index.path) as ask:
        say(f"{ask.workers} Ray workers, each with its own pipeline")
        return _run_batch(args, rows, out, fmt, ask, ask.workers)


def _run_batch(args: argparse.Namespace, rows, out, fmt: str, ask, workers: int) -> int:
    from rag.batch.inputs import count_rows
    from rag.batch.output import write_csv
    from rag.batch.run import Summary, run_batch

    summary = Summary()
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=count_rows(args.input, fmt), unit="q", file=sys.stderr, dynamic_ncols=True)

    def progress(record: dict) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(errors=summary.errors, refresh=False)

    try:
        run_batch(rows, out, ask, workers=workers, retry_errors=args.retry_errors,
                        progress=progress, summary=summary)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        say(f"interrupted: {summary.line()}; re-run the same command to resume")
        return 130
    # `out` (and its lock) is closed by cmd_batch, after the flat CSV is written
    if bar is not None:
        bar.close()
    for w in summary.warnings:
        say(f"warning: {w}")
    if args.format == "csv":
        write_csv(Path(args.output), _csv_output(args))
    say(summary.line())
    if args.eval:
        from rag.evaluation.seed import score_output

        print_json(score_output(args.output))
    return 0
