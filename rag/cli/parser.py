"""The `rag` argument parser: every command, its options and its --help examples.

Options fall back to `RAG_*` environment variables (see `rag settings`).
"""

from __future__ import annotations

import argparse

from rag.settings import RETRIEVAL_MODES, Settings

EXAMPLES = {
    "index": """examples:
  rag index                              build the index for data/corpus if missing or stale
  rag index --rebuild                    rebuild it from scratch
  rag index --corpus my_papers.jsonl     index your own papers (JSONL, CSV or Parquet: id?, title, abstract)
  rag index --corpus my_papers.jsonl --add new.jsonl
                                         add papers to the corpus file and its index (only they are embedded)
  rag index --engine ray --address auto  embed on the Ray cluster running on this machine
  rag index --verify                     check every byte of the index against its checksums
  rag index --prune                      remove the indexes of this corpus's earlier content""",
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
  rag optimize --optimizer instructions --from auto   MIPROv2 instruction-only on the shipped program
  rag optimize --optimizer knn --from auto --fit-on eval/results/train-declines-after
                                                      demos per question, from a train report's passing answers
  rag optimize --optimizer gepa --out programs/my.json
  rag optimize --optimizer bootstrap+calibrate        demos, then the yes/no verdict's calibration biases
  rag optimize --optimizer abstain+fallback --from auto --fit-on eval/results/train-shipped-ms0
                                                      per shape, where to decline unread, then the fallback""",
    "chat": """examples:
  rag chat                               ask questions one after another; Ctrl-D or 'exit' quits""",
    "mcp": """examples:
  rag mcp                                an MCP server on stdio for Claude Desktop, Cursor or any MCP client
  RAG_LM=openai/gpt-4o-mini rag mcp      its ask_papers answers with a remote model
  (client config: see README, "The papers as tools for agents")""",
    "feedback": """examples:
  rag feedback stats                     how many answers were liked, disliked, corrected
  rag feedback list --limit 20           the latest ratings (--json: every field, the rated answer included)
  rag feedback export -o eval/feedback.jsonl --merge eval/train.jsonl
                                         the written train set plus the ratings as labelled rows (never dev)
  rag optimize --train eval/feedback.jsonl
  rag eval --set eval/feedback.jsonl""",
    "settings": """examples:
  rag settings                           every setting, its value and its environment variable""",
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options (each falls back to its RAG_* environment variable)")
    g.add_argument("--corpus", help="corpus directory of seed pages or .jsonl/.csv file (RAG_CORPUS)")
    g.add_argument("--index-dir", help="where indexes live (RAG_INDEX_DIR)")
    g.add_argument("-v", "--verbose", action="store_true", help="log what happens (model loading, index builds)")

    retrieval = argparse.ArgumentParser(add_help=False)
    r = retrieval.add_argument_group("retrieval")
    r.add_argument("--k", type=int, help=f"number of papers retrieved (RAG_K, default {Settings.k})")
    r.add_argument("--retrieval", choices=RETRIEVAL_MODES, help="retrieval mode (RAG_RETRIEVAL)")
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
    p.add_argument("--verify", action="store_true",
                   help="read every byte of the index against its sha256 (opening checks sizes and sampled blocks)")
    p.add_argument("--prune", action="store_true",
                   help="remove this corpus's superseded index directories (built from its earlier content); "
                        "never the current one, nor one another process has open")

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
    p.add_argument("--ids", help="only these question ids, comma-separated (after --split and --limit): re-run the "
                                 "questions a report declined or got wrong")
    p.add_argument("--no-cache", action="store_true", help="call the LM even when a cached answer exists")
    p.add_argument("--judge", help="also score with DSPy's SemanticF1 on this LiteLLM model (needs its key)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two report directories instead")

    p = add("optimize", "Prompt-optimise the program with DSPy on the train set; save a program file.",
            [common, retrieval, model])
    p.add_argument("--optimizer", default="bootstrap",
                   metavar="bootstrap|mipro|instructions|gepa|knn|calibrate|fallback|abstain[+...]",
                   help="BootstrapFewShot (default), MIPROv2, MIPROv2 instruction-only, GEPA, knn (demos chosen per "
                        "question by similarity), calibrate (the yes/no verdict's biases), fallback (where the "
                        "evidence answers in place of a claim-check decline) or abstain (per shape, the similarity "
                        "below which it declines unread); steps chain with + (abstain+fallback)")
    p.add_argument("--from", dest="from_program", metavar="PROGRAM",
                   help="start from this program file (auto: the shipped one) instead of the baseline; its demos "
                        "and decisions are kept unless a step refits them")
    p.add_argument("--for-corpus", action="store_true",
                   help="the program is for this index's corpus only (--corpus): once in programs/, `auto` picks it "
                        "for an index of exactly this corpus and passes it over for any other")
    p.add_argument("--train", help="labelled JSONL to optimise on (default eval/train.jsonl)")
    p.add_argument("--dev", help="labelled JSONL to score the result on (default eval/dev.jsonl; 'none' skips)")
    p.add_argument("--out", help="program file (default programs/<timestamp>-<optimizer>.json)")
    p.add_argument("--reports", help="where the dev report goes (default eval/reports)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-on", nargs="+", metavar="REPORT",
                   help="calibrate, fallback, abstain, knn: fit on these train eval reports (the answers' label "
                        "probabilities, the claim-check declines, the headlines, the passing answers) instead of "
                        "running the model again; for abstain, run them with RAG_MIN_SCORE=0")
    p.add_argument("--verdict-source", nargs="+", choices=["reply", "judge", "both"], default=None,
                   metavar="SOURCE", help="with --fit-on: where the verdict may be read from: reply, judge, both "
                                          "(default: any; judge and both ask the model a second question per "
                                          "yes/no answer)")
    p.add_argument("--unsupported-verdict", choices=["decline", "keep"], default=None,
                   help="with --fit-on: a yes/no answer whose finding fails the claim checks is declined (default) or "
                        "keeps its verdict, its unsupported claims named; keep only where every yes/no question has an "
                        "answer (PubMedQA), never where off-corpus questions must be declined")

    add("chat", "Interactive question-answer loop in the terminal.", [common, retrieval, model])
    add("mcp", "Serve search_papers, ask_papers and list_papers to an MCP client (stdio).", [common, retrieval, model])
    p = add("feedback", "The chat's ratings: list, count, or export them as labelled rows for eval and optimize.",
            [common])
    p.add_argument("action", choices=("list", "stats", "export"))
    p.add_argument("--db", help="ratings file (default RAG_CACHE_DIR/feedback.sqlite3)")
    p.add_argument("--json", action="store_true", help="list, stats: print JSON")
    p.add_argument("--limit", type=int, help="list: only the latest N")
    p.add_argument("-o", "--output", help="export: the JSONL file to write (eval set format)")
    p.add_argument("--merge", metavar="SET", help="export: write this labelled set's rows first (e.g. eval/train.jsonl)")
    p.add_argument("--dev", help="export: questions of this set are never exported (default eval/dev.jsonl; 'none')")
    add("settings", "List every setting, its current value and its environment variable.", [])
    return parser
