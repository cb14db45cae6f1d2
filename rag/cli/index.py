"""`rag index` (build, rebuild, --add) and `rag papers`."""

from __future__ import annotations

import argparse
import json
import time

from rag import logs
from rag.cli.common import clean, print_json, progress_shown, say, settings_from
from rag.errors import RagError


def cmd_index(args: argparse.Namespace) -> int:
    from rag.pipeline import Pipeline

    if args.workers is not None and args.workers < 1:
        raise RagError(f"--workers must be at least 1, got {args.workers}")
    settings = settings_from(args).replace(ray_workers=args.workers)
    embedder = None
    if settings.engine == "ray":
        from rag.distributed import RayEmbedder

        embedder = RayEmbedder(settings)
    if args.prune:
        return _index_prune(args, settings)
    if args.verify:
        return _index_verify(args, settings)
    if args.add:
        return _index_add(args, settings, embedder)
    built = []

    def building(path) -> None:
        built.append(path)
        say(f"Building index {path.name} over {settings.corpus} ...")
        logs.show_steps("rag.index.store")

    t0 = time.perf_counter()
    index = Pipeline.open(settings, embedder=embedder, need_lm=False, rebuild="always" if args.rebuild else "auto",
                          progress=progress_shown(), on_build=building).index
    state = f"built in {time.perf_counter() - t0:.1f}s" if built else "up to date"
    print(f"{index.path}: {index.meta['n_papers']} papers, {index.meta['n_chunks']} chunks ({state})")
    return 0


def _index_verify(args: argparse.Namespace, settings) -> int:
    from rag.index.open import expected_index_path
    from rag.index.store import META, file_exists, load_index

    if args.add or args.rebuild:
        raise RagError("--verify only checks the index; run --add or --rebuild separately")
    path = expected_index_path(settings)
    if not file_exists(path / META):
        raise RagError(f"no index {path.name} for {settings.corpus} yet; build it with `rag index`")
    t0 = time.perf_counter()
    index = load_index(path, settings=settings, full=True)
    read = sum((path / name).stat().st_size for name in index.meta["files"])
    print(f"{path}: every file matches its sha256 ({len(index.meta['files'])} files, {read / 2**20:.1f} MiB read in "
          f"{time.perf_counter() - t0:.1f}s)")
    return 0


def _index_prune(args: argparse.Namespace, settings) -> int:
    from rag.index.prune import prune

    if args.add or args.rebuild:
        raise RagError("--prune only removes superseded index directories; run --add or --rebuild separately")
    done = prune(settings)
    for d in done.removed:
        print(f"removed {d}")
    for d in done.in_use:
        print(f"kept {d}: another process has it open (prune again once it has stopped)")
    mib = done.freed_bytes / 2**20
    print(f"{len(done.removed)} superseded index(es) of {settings.corpus} removed ({mib:.1f} MiB freed); "
          f"kept the current one, {done.current.name}" + ("" if done.current.exists() else " (not built yet)"))
    return 0


def _index_add(args: argparse.Namespace, settings, embedder) -> int:
    from rag.index import embed
    from rag.index.add import add_papers

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
    from rag.answer.poison import FLAG, instructions_to_the_model
    from rag.index.corpus import load_corpus

    settings = settings_from(args)
    papers = load_corpus(settings.corpus, settings.max_abstract_chars)
    suspicious = {p.id: instructions_to_the_model(f"{p.title}. {p.abstract}") for p in papers}
    if args.json:  # flags and suspicious_sentences: added in 0.3 (docs/json.md)
        print_json([{**p.to_json(), "flags": [FLAG] if suspicious[p.id] else [],
                     "suspicious_sentences": [s.to_json() for s in suspicious[p.id]]} for p in papers])
    else:
        for p in papers:
            mark = "  ! instructions to the model" if suspicious[p.id] else ""
            print(f"{clean(p.id)}  {clean(p.title)}{mark}")
        say(f"{len(papers)} papers")
        if any(suspicious.values()):
            say(f"{sum(map(bool, suspicious.values()))} papers hold sentences addressed to the model; they are "
                "never given to it as evidence (rag papers --json lists them)")
    return 0
