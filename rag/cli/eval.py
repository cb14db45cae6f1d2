"""`rag eval` (a labelled set, PubMedQA, or --compare of two reports) and `rag optimize`.

What differs between kinds of set (how rows are chosen and checked, the corpus they run over, how a
run is labelled and summed up) is the kind's own (rag/evaluation/kinds.py); this module only wires
flags to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rag.cli.common import open_pipeline, progress_shown, say
from rag.errors import RagError
from rag.settings import ROOT


def _eval_path(given: str | None, default: str) -> str:
    return given or str(ROOT / default)


def only_ids(rows: list[dict], ids: str) -> list[dict]:
    """The rows whose id is in the comma-separated `ids`, in the set's order; an id not in the set is an error."""
    wanted = [i.strip() for i in ids.split(",") if i.strip()]
    missing = sorted(set(wanted) - {str(r["id"]) for r in rows})
    if not wanted or missing:
        raise RagError(f"--ids: {', '.join(missing[:5]) or 'no id given'}"
                       f"{' not in the selected questions' if missing else ''}; give ids of the set (and --split) "
                       f"you run, separated by commas")
    keep = set(wanted)
    return [r for r in rows if str(r["id"]) in keep]


def cmd_eval(args: argparse.Namespace) -> int:
    from rag.evaluation import harness
    from rag.evaluation.kinds import kind_for_set

    out_root = _eval_path(args.out, "eval/reports")
    if args.compare:
        from rag.evaluation.compare import compare_reports, verdict, verdict_line

        path, result = compare_reports(*args.compare, out_root)
        print(verdict(result))
        if verdict_line(result):
            print(verdict_line(result))
        for name, v in result["metrics"].items():
            print(f"  {name:<20} A {v['a']:.3f}  B {v['b']:.3f}  ({v['b'] - v['a']:+.3f})")
        print(f"report: {path}")
        return 0
    kind = kind_for_set(args.set)
    if args.judge and kind.name != "seed":
        raise RagError(f"--judge scores free-text answers of a labelled set; {args.set} is scored by the "
                       f"answer's verdict, drop --judge")
    if kind.corpus is not None and args.corpus and Path(args.corpus).resolve() != kind.corpus.resolve():
        raise RagError(f"--set {args.set} runs over its own corpus {kind.corpus}; drop --corpus")
    # a bad set, --split or --limit fails before anything loads
    rows, set_path = kind.select(args.set, split=args.split, full=args.full, limit=args.limit)
    if args.ids:
        rows = only_ids(rows, args.ids)
        if getattr(kind, "selection", None):  # PubMedQA's report says which questions it ran
            kind.selection = {**kind.selection, "n": len(rows), "ids": [str(r["id"]) for r in rows]}
    overrides = {"corpus": str(kind.corpus)} if kind.corpus is not None else {}
    pipe = open_pipeline(args, need_lm=True, disk_cache=not args.no_cache, **overrides)
    kind.check(rows, set_path, set(pipe.index.papers))  # gold ids must be in this corpus
    if args.judge:
        from rag.lm.backends import make_lm

        kind.judge = harness.semantic_judge(make_lm(pipe.settings.replace(lm=args.judge)))
    label = args.label or kind.label(pipe.program_label, pipe.settings.retrieval)
    say(f"Evaluating {kind.describe(len(rows))} with program {pipe.program_label} on {pipe.lm_label} ...")
    path = harness.run_eval(pipe, rows, label=label, set_path=set_path, out_root=out_root,
                            progress=progress_shown(), kind=kind)
    summary, _ = harness.read_report(path)
    print("\n".join(kind.summary_lines(summary)))
    print(f"report: {path}")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from rag import optimize
    from rag.answer.program import VERDICT_SOURCES
    from rag.answer.program_files import new_program_path, read_program_file, resolve_program
    from rag.evaluation.harness import read_report
    from rag.evaluation.seed import SeedSet, load_set

    steps = optimize.check_steps(args.optimizer)
    if (args.verdict_source or args.unsupported_verdict) and not (args.fit_on and "calibrate" in steps):
        flag = "--verdict-source" if args.verdict_source else "--unsupported-verdict"
        raise RagError(f"{flag} sets decisions fitted from reports: use it with --optimizer calibrate --fit-on REPORT")
    start = None
    if args.from_program not in (None, "auto", "baseline"):
        start = resolve_program(args.from_program)
        read_program_file(start)  # a bad file fails before anything loads
    train_path = _eval_path(args.train, "eval/train.jsonl")
    dev_path = None if args.dev == "none" else _eval_path(args.dev, "eval/dev.jsonl")
    train = [] if args.fit_on else load_set(train_path)  # --fit-on reads the reports instead
    dev = load_set(dev_path) if dev_path else None
    fit_on = args.fit_on
    if fit_on:  # reports of train runs only, checked against dev (the default one under --dev none) up front
        default_dev = ROOT / "eval/dev.jsonl"
        dev_rows = dev if dev is not None else (load_set(default_dev) if default_dev.is_file() else [])
        optimize.check_fit_on(args.optimizer, fit_on, {r["id"] for r in dev_rows})
    out = new_program_path(args.optimizer, args.out)  # an unwritable --out fails before any work
    pipe = open_pipeline(args, need_lm=dev is not None or not fit_on, disk_cache=True, program="baseline")
    ids = set(pipe.index.papers)
    if args.from_program == "auto":  # the program `auto` answers with on this index's corpus (None: the baseline)
        start = resolve_program("auto", pipe.index.meta.get("corpus_hash") or "")
    if not fit_on:
        load_set(train_path, ids)
    if dev is not None:
        load_set(dev_path, ids)
    out, report = optimize.optimize_and_save(pipe, args.optimizer, train, train_path, out, dev=dev, dev_path=dev_path,
                                             reports=_eval_path(args.reports, "eval/reports"), seed=args.seed,
                                             progress=progress_shown(), fit_on=fit_on, say=say,
                                             verdict_sources=args.verdict_source or VERDICT_SOURCES,
                                             unsupported_verdict=args.unsupported_verdict, start=start,
                                             for_corpus=args.for_corpus)
    if report is not None:
        summary, _ = read_report(report)
        print("\n".join(SeedSet().summary_lines(summary)))
        print(f"report: {report}")
    print(f"program: {out}")
    return 0
