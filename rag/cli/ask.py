"""`rag search`, `rag ask`, `rag chat` and `rag mcp`: a question in, passages or an answer out."""

from __future__ import annotations

import argparse
import sys
import textwrap

from rag.cli.common import clean, format_answer, open_pipeline, print_json, say, settings_from
from rag.errors import RagError


def cmd_search(args: argparse.Namespace) -> int:
    from rag.pipeline import validate_question

    question = validate_question(args.question)  # before loading anything
    pipe = open_pipeline(args, need_lm=False)
    result = pipe.search(question, k=args.k)
    evidence = None
    if args.evidence:
        from rag.answer.evidence import evidence_tokens
        from rag.answer.shapes import question_shape

        shape = question_shape(question)
        evidence = pipe.select_evidence(question, result, shape)
    if args.json:
        out = {"question": question, "results": [h.to_json() for h in result.hits]}
        if evidence is not None:
            out["shape"] = shape
            out["evidence"] = [{"n": h.rank, "paper_id": h.paper.id, "title": h.paper.title, "text": h.text}
                               for h in evidence]
        print_json(out)
        return 0
    for h in result.hits:
        print(f"{h.rank:>2}. [{h.score:.4f}] {clean(h.paper.title)} ({clean(h.paper.id)})")
        print(textwrap.indent(textwrap.fill(clean(h.text), 96), "    "))
    if evidence is not None:
        print(f"\nWhat the model reads ({shape} question, about {evidence_tokens(evidence)} tokens):")
        for h in evidence:
            print(textwrap.fill(clean(f"[{h.rank}] {h.paper.title}: {h.text}"), 100, subsequent_indent="    "))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from rag.pipeline import validate_question

    question = validate_question(args.question)
    pipe = open_pipeline(args, need_lm=True)
    result = pipe.ask(question)
    if args.json:
        print_json(result)
    else:
        print(format_answer(result))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    pipe = open_pipeline(args, need_lm=True)
    pipe.warm()  # the first question should not pay for reading the instructions
    say(f"Ask about {len(pipe.index.papers)} papers. Empty line or Ctrl-D to quit.")
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
            print(f"error: {clean(e)}", file=sys.stderr)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)


def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve search_papers / ask_papers / list_papers to an MCP client on stdio (rag/mcp_server.py)."""
    from rag.mcp_server import serve

    settings = settings_from(args)  # a bad setting fails here, before the client is answered
    say(f"papers-rag MCP server on stdio (index {settings.index_dir}); the model loads on the first tool call")
    serve(settings)
    return 0
