"""The `rag` command: a thin layer over the library.

Subcommands: index, papers, search, ask, batch, chat, eval, optimize, settings. Options fall back to
`RAG_*` environment variables (see `rag settings`). Expected errors print one
line on stderr and exit 1; bad usage exits 2. `--json` output shapes are the
contracts in docs/json.md and only ever gain fields. Human-readable output shows
corpus and model text without terminal control sequences (a title cannot recolour
or retitle the terminal); JSON output escapes every control character.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from typing import Any

from rag import logs
from rag.errors import RagError
from rag.retrieve import MODES
from rag.text import strip_control

EXAMPLES = {
    "index": """examples:
  rag index                              build the index for data/corpus if missing or stale
  rag index --rebuild                    rebuild it from scratch
  rag index --corpus my_papers.jsonl     index your own papers (JSONL, CSV or Parquet: id?, title, abstract)
  rag index --corpus my_papers.jsonl --add new.jsonl
                                         add papers to the corpus file and its index (only they are embedded)
  rag index --engine ray --address auto  embed on the Ray cluster running on this machine""",
    "papers": """examples:
  rag papers                             one line per paper: id and title
  rag papers --json | jq length          every paper as JSON""",
    "search": """examples:
  rag search "state space models" --k 5
  rag search "what is ReFT?" --retrieval bm25 --json
  rag search "Which papers study state space models?" --evidence   what the model would read""",
    "ask": """examples:
  rag ask "What are the two subtasks of the I am a Strange Dataset benchmark?"
  rag ask "What is ReFT?" --json
  RAG_LM=openai/gpt-4o-mini rag ask "Which papers study state space models?\"""",
    "batch": """examples:
  rag batch questions.txt -o answers.jsonl          one question a line; re-run to resume
  rag batch labelled.jsonl -o out.jsonl --eval      score rows that carry facts / gold_paper_ids
  rag batch qs.csv -o out.jsonl --format csv        also write out.csv (id, question, answer, ...)
  cat qs.txt | rag batch - -o out.jsonl --retry-errors
  RAG_LM=openai/gpt-4o-mini rag batch qs.jsonl -o out.jsonl --workers 8
  rag batch qs.jsonl -o out.jsonl --engine ray --address auto   one loaded pipeline per Ray worker""",
    "eval": """examples:
  rag eval                                            the dev set with the current program (auto)
  rag eval --set eval/dev.jsonl --program baseline    the unoptimised program
  rag eval --retrieval bm25 --label bm25-only         another retrieval mode, named report
  rag eval --compare eval/reports/A eval/reports/B    paired bootstrap of the headline (B - A)
  rag eval --set pubmedqa                             PubMedQA: 200 of the 500 official test questions
  rag eval --set pubmedqa --full                      all 500 test questions (over an hour on the local model)
  rag eval --set pubmedqa --split train               the non-test half, the only one to tune on
  RAG_LM=openai/gpt-4o-mini rag eval --judge openai/gpt-4o-mini   add DSPy's SemanticF1""",
    "optimize": """examples:
  rag optimize                                        BootstrapFewShot on eval/train.jsonl, scored on dev
  rag optimize --optimizer mipro --dev none           MIPROv2 (small budget), skip the dev run
  rag optimize --optimizer gepa --out programs/my.json""",
    "chat": """examples:
  rag chat                               ask questions one after another; Ctrl-D or 'exit' quits""",
    "settings": """examples:
  rag settings                           every setting, its value and its environment variable""",
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options (each falls back to its RAG_* environment variable)")
    g.add_argument("--corpus", help="corpus directory of seed pages or .jsonl/.csv file (RAG_CORPUS)")
    g.add_argument("--index-dir", help="where indexes live (RAG_INDEX_DIR)")
    g.add_argument("-v", "--verbose", action="store_true", help="log what happens (model loading, index builds)")

    retrieval = argparse.ArgumentParser(add_help=False)
    r = retrieval.add_argument_group("retrieval")
    r.add_argument("--k", type=int, help="number of passages (RAG_K, default 4)")
    r.add_argument("--retrieval", choices=tuple(MODES), help="retrieval mode (RAG_RETRIEVAL)")
    r.add_argument("--no-rebuild", action="store_true", help="error instead of building a missing or stale index")

    model = argparse.ArgumentParser(add_help=False)
    m = model.add_argument_group("language model")
    m.add_argument("--lm", help="'local' or a LiteLLM model string such as openai/gpt-4o-mini (RAG_LM)")
    m.add_argument("--api-base", help="OpenAI-compatible server URL (RAG_API_BASE)")
    m.add_argument("--program", help="'auto', 'baseline' or a saved program JSON (RAG_PROGRAM)")

    parser = argparse.ArgumentParser(
        prog="rag", description="Ask questions of research-paper abstracts; get answers with checkable citations.",
        epilog="Start with `rag ask \"...\"`. Settings: `rag settings`.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, parents: list) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=parents, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    engine = argparse.ArgumentParser(add_help=False)
    e = engine.add_argument_group("engine")
    e.add_argument("--engine", choices=("local", "ray"), help="run here (local) or on a Ray cluster (RAG_ENGINE)")
    e.add_argument("--address", help="Ray cluster address, e.g. auto (RAG_RAY_ADDRESS; empty starts a local Ray)")

    p = add("index", "Build (or check) the search index for the corpus.", [common, engine])
    p.add_argument("--rebuild", action="store_true", help="rebuild even if an up-to-date index exists")
    p.add_argument("--add", metavar="PAPERS", help="merge these papers (.jsonl/.csv/.parquet) into the corpus file "
                                                   "and index them, embedding only what is new or changed")
    p.add_argument("--workers", type=int, help="Ray actors embedding (RAG_RAY_WORKERS; default one per CPU)")

    p = add("papers", "List the papers in the corpus.", [common])
    p.add_argument("--json", action="store_true", help="print a JSON list of papers")

    p = add("search", "Show the passages retrieval finds for a question (no LM).", [common, retrieval])
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--evidence", action="store_true", help="also show the evidence sentences the model would read")

    p = add("ask", "Answer a question with [n] citations to the papers used.", [common, retrieval, model])
    p.add_argument("question")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("batch", "Answer a file of questions (JSONL, CSV or text); resumable.", [common, retrieval, model, engine])
    p.add_argument("input", help="questions: .jsonl ({id?, question, ...}), .csv (question column) or .txt; - for stdin")
    p.add_argument("-o", "--output", required=True, help="JSONL output; re-running with it resumes")
    p.add_argument("--input-format", choices=("jsonl", "csv", "txt"), help="override detection by extension")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                   help="csv also writes a flat CSV next to the JSONL output")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="start fresh instead of resuming")
    mode.add_argument("--retry-errors", action="store_true", help="re-run only the rows that failed")
    p.add_argument("--workers", type=int, help="parallel questions for remote backends (default 1); with --engine ray, "
                                               "Ray workers, each with its own loaded pipeline (default one per CPU)")
    p.add_argument("--eval", action="store_true", help="score rows carrying facts/gold_paper_ids and print the metrics")

    p = add("eval", "Score the program on a labelled set; write a report under eval/reports/.",
            [common, retrieval, model])
    p.add_argument("--set", help="labelled JSONL (default eval/dev.jsonl), or 'pubmedqa' for the PubMedQA benchmark")
    p.add_argument("--split", choices=("test", "train"),
                   help="pubmedqa: the official test split (default; report on it) or the other half (tune on it)")
    p.add_argument("--full", action="store_true",
                   help="pubmedqa: all 500 questions of the split, not the fixed stratified 200-question subset")
    p.add_argument("--label", help="report name (default: program and retrieval mode)")
    p.add_argument("--out", help="reports directory (default eval/reports)")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--no-cache", action="store_true", help="call the LM even when a cached answer exists")
    p.add_argument("--judge", help="also score with DSPy's SemanticF1 on this LiteLLM model (needs its key)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two report directories instead")

    p = add("optimize", "Prompt-optimise the program with DSPy on the train set; save a program file.",
            [common, retrieval, model])
    p.add_argument("--optimizer", choices=("bootstrap", "mipro", "gepa"), default="bootstrap",
                   help="BootstrapFewShot (default), MIPROv2 or GEPA")
    p.add_argument("--train", help="labelled JSONL to optimise on (default eval/train.jsonl)")
    p.add_argument("--dev", help="labelled JSONL to score the result on (default eval/dev.jsonl; 'none' skips)")
    p.add_argument("--out", help="program file (default programs/<timestamp>-<optimizer>.json)")
    p.add_argument("--reports", help="where the dev report goes (default eval/reports)")
    p.add_argument("--seed", type=int, default=0)

    add("chat", "Interactive question-answer loop in the terminal.", [common, retrieval, model])
    add("settings", "List every setting, its current value and its environment variable.", [])
    return parser


def _settings(args: argparse.Namespace):
    from rag.settings import Settings

    fields = {"corpus": "corpus", "index_dir": "index_dir", "k": "k", "retrieval": "retrieval",
              "lm": "lm", "api_base": "api_base", "program": "program", "engine": "engine", "address": "ray_address"}
    return Settings.load(**{f: getattr(args, a) for a, f in fields.items() if hasattr(args, a)})


def _progress() -> bool:
    return sys.stderr.isatty()


def _open(args: argparse.Namespace, *, need_lm: bool, disk_cache: bool = False, **overrides: Any):
    from rag.pipeline import Pipeline

    settings = _settings(args)
    if overrides:
        settings = settings.replace(**overrides)
    rebuild = "never" if getattr(args, "no_rebuild", False) else "auto"

    def building(path) -> None:
        _say("Building the index (first run or the corpus/settings changed; about a minute)...")
        logs.show_steps("rag.index")

    pipeline = Pipeline.open(settings, rebuild=rebuild, progress=_progress(), need_lm=need_lm, disk_cache=disk_cache,
                             on_build=building)
    logs.quiet_libraries()  # libraries imported while opening (DSPy) set their loggers back to INFO
    return pipeline


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# json.dumps escapes C0 controls (ESC included) but not C1 ones (U+0080-U+009F, an 8-bit CSI among them).
_ESCAPE_C1 = {c: f"\\u{c:04x}" for c in range(0x80, 0xA0)}


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2).translate(_ESCAPE_C1))


def _clean(text: Any) -> str:
    return strip_control(str(text))


def format_answer(result: dict, width: int = 100) -> str:
    """Human-readable answer with its numbered reference list, and a warning for each claim whose names
    or numbers appear in no passage it cites (terminal control sequences removed)."""
    lines = [textwrap.fill(line, width, subsequent_indent="  " if line.startswith("- ") else "")
             for line in _clean(result["answer"]).splitlines()]
    unsupported = [c for c in result.get("claims") or [] if not c["supported"]]
    if unsupported:
        lines += ["", "Check these: not in the passages they cite:"]
        lines += [f"  ! {_clean(', '.join(c['unsupported_terms']))}  (\"{textwrap.shorten(_clean(c['text']), 70)}\")"
                  for c in unsupported]
    if result["citations"]:
        lines += ["", "References:"]
        lines += [f"  [{c['n']}] {_clean(c['title'])} ({_clean(c['paper_id'])})" for c in result["citations"]]
    elif result["abstained"] and result["passages"]:
        lines += ["", "Closest papers:"]
        lines += [f"  - {_clean(p['title'])}" for p in result["passages"][:3]]
    prov = result["provenance"]
    lines += ["", f"({prov['latency_s']:.1f}s, {prov['prompt_tokens']}+{prov['completion_tokens']} tokens, "
                  f"{prov['lm']}, program {prov['program']})"]
    return "\n".join(lines)


def cmd_index(args: argparse.Namespace) -> int:
    from rag.pipeline import Pipeline

    if args.workers is not None and args.workers < 1:
        raise RagError(f"--workers must be at least 1, got {args.workers}")
    settings = _settings(args).replace(ray_workers=args.workers)
    embedder = None
    if settings.engine == "ray":
        from rag.distributed import RayEmbedder

        embedder = RayEmbedder(settings)
    if args.add:
        return _index_add(args, settings, embedder)
    built = []

    def building(path) -> None:
        built.append(path)
        _say(f"Building index {path.name} over {settings.corpus} ...")
        logs.show_steps("rag.index")

    t0 = time.perf_counter()
    index = Pipeline.open(settings, embedder=embedder, need_lm=False, rebuild="always" if args.rebuild else "auto",
                          progress=_progress(), on_build=building).index
    state = f"built in {time.perf_counter() - t0:.1f}s" if built else "up to date"
    print(f"{index.path}: {index.meta['n_papers']} papers, {index.meta['n_chunks']} chunks ({state})")
    return 0


def _index_add(args: argparse.Namespace, settings, embedder) -> int:
    from rag import embed
    from rag.update import add_papers

    if args.rebuild:
        raise RagError("--add and --rebuild do not go together: --add embeds only the new papers")
    t0 = time.perf_counter()
    embedder = embedder or embed.get_embedder(settings.embed_model, settings.embed_backend, settings.cache_dir)
    added = add_papers(settings, args.add, embedder)
    if not added.new and not added.changed:
        print(f"{added.path}: nothing to add, the {added.unchanged} papers of {args.add} are already in {settings.corpus}")
        return 0
    meta = json.loads((added.path / "meta.json").read_text(encoding="utf-8"))
    print(f"added {added.new} new and {added.changed} changed papers ({added.unchanged} already there) to "
          f"{settings.corpus}\n{added.path}: {meta['n_papers']} papers, {meta['n_chunks']} chunks (embedded "
          f"{added.reuse.embedded} texts, reused {added.reuse.reused}; {time.perf_counter() - t0:.1f}s)")
    return 0


def cmd_papers(args: argparse.Namespace) -> int:
    from rag.corpus import load_corpus

    settings = _settings(args)
    papers = load_corpus(settings.corpus, settings.max_abstract_chars)
    if args.json:
        _print_json([p.to_json() for p in papers])
    else:
        for p in papers:
            print(f"{_clean(p.id)}  {_clean(p.title)}")
        _say(f"{len(papers)} papers")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from rag.pipeline import validate_question

    question = validate_question(args.question)  # before loading anything
    pipe = _open(args, need_lm=False)
    result = pipe.search(question, k=args.k)
    evidence = None
    if args.evidence:
        from rag.evidence import evidence_tokens
        from rag.shapes import question_shape

        shape = question_shape(question)
        evidence = pipe.select_evidence(question, result, shape)
    if args.json:
        out = {"question": question, "results": [h.to_json() for h in result.hits]}
        if evidence is not None:
            out["shape"] = shape
            out["evidence"] = [{"n": h.rank, "paper_id": h.paper.id, "title": h.paper.title, "text": h.text}
                               for h in evidence]
        _print_json(out)
        return 0
    for h in result.hits:
        print(f"{h.rank:>2}. [{h.score:.4f}] {_clean(h.paper.title)} ({_clean(h.paper.id)})")
        print(textwrap.indent(textwrap.fill(_clean(h.text), 96), "    "))
    if evidence is not None:
        print(f"\nWhat the model reads ({shape} question, about {evidence_tokens(evidence)} tokens):")
        for h in evidence:
            print(textwrap.fill(_clean(f"[{h.rank}] {h.paper.title}: {h.text}"), 100, subsequent_indent="    "))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from rag.pipeline import validate_question

    question = validate_question(args.question)
    pipe = _open(args, need_lm=True)
    result = pipe.ask(question)
    if args.json:
        _print_json(result)
    else:
        print(format_answer(result))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    pipe = _open(args, need_lm=True)
    pipe.warm()  # the first question should not pay for reading the instructions
    _say(f"Ask about {len(pipe.index.papers)} papers. Empty line or Ctrl-D to quit.")
    while True:
        try:
            question = input("\nquestion> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if question.strip().lower() in ("", "exit", "quit", ":q"):
            return 0
        try:
            print(format_answer(pipe.ask(question)))
        except RagError as e:
            print(f"error: {_clean(e)}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)


def cmd_batch(args: argparse.Namespace) -> int:
    import itertools
    from pathlib import Path

    from rag import batch

    if args.workers is not None and args.workers < 1:
        raise RagError(f"--workers must be at least 1, got {args.workers}")
    # input used as output (the JSONL or the flat CSV beside it): refused before any work
    batch.check_paths(args.input, Path(args.output), _csv_output(args) if args.format == "csv" else None)
    stream = batch.open_input(args.input)
    peek = stream.peek(1)[:200] if hasattr(stream, "peek") else b""
    fmt = batch.detect_format(args.input, args.input_format, peek)
    rows = batch.read_rows(stream, fmt, Path(args.input).name if args.input != "-" else "stdin")
    first = next(rows, None)  # a CSV without a question column fails here, before any model work
    rows = itertools.chain([first] if first else [], rows)
    out = batch.Output(args.output, overwrite=args.overwrite)  # an unwritable path fails here too
    if _settings(args).engine == "ray":
        return _batch_ray(args, rows, out, fmt)
    pipe = _open(args, need_lm=True)
    workers = args.workers or 1
    if workers > 1 and pipe.settings.lm == "local":
        _say("note: the local model answers one question at a time; --workers applies to remote backends")
        workers = 1
    return _run_batch(args, rows, out, fmt, pipe.ask, workers)


def _csv_output(args: argparse.Namespace):
    """The flat CSV that `--format csv` writes beside the JSONL output."""
    from pathlib import Path

    return Path(args.output).with_suffix(".csv")


def _batch_ray(args: argparse.Namespace, rows, out, fmt: str) -> int:
    """`rag batch --engine ray`: the index is checked (or built) here; each Ray worker loads the pipeline."""
    from rag.distributed import ray_asker

    pipe = _open(args, need_lm=False)
    with ray_asker(pipe.settings.replace(ray_workers=args.workers)) as ask:
        _say(f"{ask.workers} Ray workers, each with its own pipeline")
        return _run_batch(args, rows, out, fmt, ask, ask.workers)


def _run_batch(args: argparse.Namespace, rows, out, fmt: str, ask, workers: int) -> int:
    from pathlib import Path

    from rag import batch

    summary = batch.Summary()
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=batch.count_rows(args.input, fmt), unit="q", file=sys.stderr, dynamic_ncols=True)

    def progress(record: dict) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(errors=summary.errors, refresh=False)

    try:
        batch.run_batch(rows, out, ask, workers=workers, retry_errors=args.retry_errors,
                        progress=progress, summary=summary)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        _say(f"interrupted: {summary.line()}; re-run the same command to resume")
        return 130
    finally:
        out.close()
    if bar is not None:
        bar.close()
    for w in summary.warnings:
        _say(f"warning: {w}")
    if args.format == "csv":
        batch.write_csv(Path(args.output), _csv_output(args))
    _say(summary.line())
    if args.eval:
        from rag.evaluate import score_output

        _print_json(score_output(args.output))
    return 0


def _eval_path(given: str | None, default: str) -> str:
    from rag.settings import ROOT

    return given or str(ROOT / default)


def _print_summary(s: dict) -> None:
    m, a = s["metrics"], s["abstention"]
    keys = ("fact_recall", "token_f1", "citation_validity", "citation_precision", "citation_recall",
            "faithfulness")
    print(f"headline {s['headline']:.3f} (95% CI {s['headline_ci95'][0]:.3f}-{s['headline_ci95'][1]:.3f}), "
          f"n={s['n']}, errors={s['errors']}")
    print("  " + ", ".join(f"{k} {m[k]:.3f}" for k in keys if k in m))
    print(f"  abstention precision {a['abstention_precision']}, recall {a['abstention_recall']}, "
          f"false-abstention rate {a['false_abstention_rate']}")
    print("  retrieval " + "; ".join(f"{mode} R@5 {r.get('recall@5')} MRR {r.get('mrr@10')}"
                                     for mode, r in s["retrieval"].items()))
    print(f"  LM time per question {s['latency']['lm_mean_s']}s (p95 {s['latency']['lm_p95_s']}s), "
          f"prompt tokens {s['tokens']['prompt_mean']}")


def cmd_eval(args: argparse.Namespace) -> int:
    from rag import evaluate

    out_root = _eval_path(args.out, "eval/reports")
    if args.compare:
        path, result = evaluate.compare_reports(*args.compare, out_root)
        print(evaluate.verdict(result))
        for name, v in result["metrics"].items():
            print(f"  {name:<20} A {v['a']:.3f}  B {v['b']:.3f}  ({v['b'] - v['a']:+.3f})")
        print(f"report: {path}")
        return 0
    if args.set == "pubmedqa":
        return _eval_pubmedqa(args, out_root)
    if args.split or args.full:
        raise RagError("--split and --full apply to --set pubmedqa only")
    set_path = _eval_path(args.set, "eval/dev.jsonl")
    rows = evaluate.load_set(set_path)  # a bad set fails before anything loads
    if args.limit is not None:
        if args.limit < 1:
            raise RagError(f"--limit must be at least 1, got {args.limit}")
        rows = rows[: args.limit]
    pipe = _open(args, need_lm=True, disk_cache=not args.no_cache)
    evaluate.load_set(set_path, set(pipe.index.papers))  # gold ids must be in this corpus
    judge = None
    if args.judge:
        from rag.lm import make_lm

        judge = evaluate.semantic_judge(make_lm(pipe.settings.replace(lm=args.judge)))
    label = args.label or f"{pipe.program_label.removesuffix('.json')}-{pipe.settings.retrieval}"
    _say(f"Evaluating {len(rows)} questions with program {pipe.program_label} on {pipe.lm_label} ...")
    path = evaluate.run_eval(pipe, rows, label=label, set_path=set_path, out_root=out_root,
                             progress=_progress(), judge=judge)
    summary, _ = evaluate.read_report(path)
    _print_summary(summary)
    print(f"report: {path}")
    return 0


def _eval_pubmedqa(args: argparse.Namespace, out_root: str) -> int:
    """`rag eval --set pubmedqa`: the PubMedQA questions over its own 1,000-abstract corpus."""
    from pathlib import Path

    from rag import evaluate, pubmedqa

    if args.judge:
        raise RagError("--judge scores free-text answers of a labelled set; PubMedQA is scored by the "
                       "answer's yes/no/maybe verdict, drop --judge")
    if args.corpus and Path(args.corpus).resolve() != pubmedqa.CORPUS.resolve():
        raise RagError(f"--set pubmedqa runs over its own corpus {pubmedqa.CORPUS}; drop --corpus")
    rows, selection = pubmedqa.select(pubmedqa.load_questions(), args.split or "test", full=args.full,
                                      limit=args.limit)  # a bad file or --limit fails before anything loads
    pipe = _open(args, need_lm=True, disk_cache=not args.no_cache, corpus=str(pubmedqa.CORPUS))
    pubmedqa.check_corpus(rows, set(pipe.index.papers))
    label = args.label or (f"pubmedqa-{pubmedqa.selection_tag(selection)}-"
                           f"{pipe.program_label.removesuffix('.json')}-{pipe.settings.retrieval}")
    _say(f"Evaluating PubMedQA, {pubmedqa.describe(selection)}: {len(rows)} questions with program "
         f"{pipe.program_label} on {pipe.lm_label} ...")
    path = evaluate.run_eval(pipe, rows, label=label, set_path=pubmedqa.QUESTIONS, out_root=out_root,
                             progress=_progress(), kind=pubmedqa.PubMedQA(selection))
    summary, _ = evaluate.read_report(path)
    print("\n".join(pubmedqa.summary_lines(summary)))
    print(f"report: {path}")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from rag import evaluate, optimize
    from rag.programs import new_program_path

    train_path = _eval_path(args.train, "eval/train.jsonl")
    dev_path = None if args.dev == "none" else _eval_path(args.dev, "eval/dev.jsonl")
    train = evaluate.load_set(train_path)
    dev = evaluate.load_set(dev_path) if dev_path else None
    out = new_program_path(args.optimizer, args.out)  # an unwritable --out fails before any work
    pipe = _open(args, need_lm=True, disk_cache=True, program="baseline")
    ids = set(pipe.index.papers)
    evaluate.load_set(train_path, ids)
    if dev is not None:
        evaluate.load_set(dev_path, ids)
    out, report = optimize.optimize_and_save(pipe, args.optimizer, train, train_path, out, dev=dev, dev_path=dev_path,
                                             reports=_eval_path(args.reports, "eval/reports"), seed=args.seed,
                                             progress=_progress(), say=_say)
    if report is not None:
        summary, _ = evaluate.read_report(report)
        _print_summary(summary)
        print(f"report: {report}")
    print(f"program: {out}")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from rag.settings import ENV_PREFIX, Settings

    for name, value, help in Settings.load().describe():
        shown = "***" if name in ("api_key", "auth") and value else value
        print(f"{ENV_PREFIX}{name.upper():<18} = {shown!s:<40} {help}")
    return 0


COMMANDS = {"index": cmd_index, "papers": cmd_papers, "search": cmd_search, "ask": cmd_ask,
            "batch": cmd_batch, "chat": cmd_chat, "eval": cmd_eval, "optimize": cmd_optimize,
            "settings": cmd_settings}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup(getattr(args, "verbose", False))
    try:
        return COMMANDS[args.command](args)
    except RagError as e:
        print(f"error: {_clean(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
