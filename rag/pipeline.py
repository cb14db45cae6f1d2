"""One loaded question-answering session: index, retriever, LM and program.

`Pipeline.open(settings)` loads (or builds) the index, the embedder and the LM
once; `ask()` and `search()` are then cheap to call many times. The CLI, the
chat, batch QA and the eval harness all go through here, so they answer the
same question the same way and report the same provenance.

Left out: conversation memory (the chat owns it) and output formatting (the CLI
and app own it).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import dspy
from dspy.streaming import StreamListener, StreamResponse

from rag.answer.evidence import select_evidence
from rag.answer.extractive import extractive_answer
from rag.answer.program import (
    CLAIM_CHECK_DECLINES,
    TEXT_FIELDS,
    CitedRAG,
    CompactJSONAdapter,
    answer_adapter,
    rewrite_question,
    with_verdict,
)
from rag.answer.program_files import choose_shipped, load_program, read_program_file, read_shipped, resolve_program
from rag.answer.retrieve import Hit, Retriever, SearchResult
from rag.answer.shapes import parse_verdict
from rag.errors import LMError, ProgramError, QuestionTooLong, RagError
from rag.index.embed import Embedder, get_embedder
from rag.index.open import open_index
from rag.index.store import Index
from rag.lm.backends import backend, describe_lm_error, lm_label, make_lm
from rag.settings import Settings
from rag.text import json_string_so_far

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 2000
EXTRACTIVE = "extractive"  # RAG_ANSWER / RAG_FALLBACK value, and provenance.lm of an answer no LM wrote
# DSPy keeps every LM call (prompt and output) in histories and traces of up to 10,000 entries; a
# long batch would hold tens of MB of old prompts. Keep the last few for `dspy.inspect_history`.
HISTORY_KEEP = 20


def validate_question(question: Any) -> str:
    """A clean question, or a RagError saying what is wrong with it."""
    if not isinstance(question, str):
        raise RagError("the question must be text")
    q = question.strip()
    if len(q) > MAX_QUESTION_CHARS:
        raise QuestionTooLong(len(q), MAX_QUESTION_CHARS)
    # Bytes that were not UTF-8 reach Python (argv, a surrogateescape'd file) as U+DC80..U+DCFF.
    raw = sorted({f"0x{ord(c) - 0xDC00:02X}" for c in q if 0xDC80 <= ord(c) <= 0xDCFF})
    if raw:
        raise RagError(f"the question is not valid UTF-8 (byte {', '.join(raw[:3])}); type it again or re-save "
                       f"the text as UTF-8")
    # Controls, surrogates, private use and the 66 noncharacters are refused; a code point merely unassigned
    # in this Python's Unicode tables (Cn: a newer emoji such as U+1FAE8) is someone's text.
    bad = sorted({f"U+{ord(c):04X}" for c in q if (unicodedata.category(c) in ("Cc", "Cs", "Co") and c not in "\t\n\r")
                  or _noncharacter(c)})
    if bad:
        raise RagError(f"the question contains control characters ({', '.join(bad[:5])}); remove them")
    # Zero-width and other format characters (Cf) and separators show nothing: a question of only
    # those is as empty as "" and must not reach the model.
    if not any(unicodedata.category(c)[0] not in "ZC" for c in q):
        raise RagError("the question is empty; ask something, e.g. rag ask \"What is ReFT?\"")
    return " ".join(q.split())


def _noncharacter(c: str) -> bool:
    """U+FDD0..U+FDEF and the last two code points of every plane: never assigned, by Unicode's promise."""
    n = ord(c)
    return 0xFDD0 <= n <= 0xFDEF or (n & 0xFFFE) == 0xFFFE


# Prompt tokens besides the evidence and the answer: instructions, field markers, an optimised program's
# demos, and a question of up to 2,000 characters (~500 tokens).
PROMPT_OVERHEAD_TOKENS = 1200


def check_context(settings: Settings) -> None:
    """Refuse settings whose prompt cannot fit the local model's context window, before anything loads.

    The model reads at most RAG_EVIDENCE_TOKENS of evidence however many papers are retrieved (k only
    widens the choice), so the evidence budget and the answer's RAG_MAX_TOKENS are what must fit. A
    remote backend's window is unknown here: it answers for itself."""
    if settings.lm != "local":
        return
    need = settings.evidence_tokens + settings.max_tokens + PROMPT_OVERHEAD_TOKENS
    if need > settings.n_ctx:
        raise RagError(f"RAG_EVIDENCE_TOKENS={settings.evidence_tokens} and RAG_MAX_TOKENS={settings.max_tokens} need "
                       f"about {need:,} tokens with the prompt; the local model's context holds RAG_N_CTX="
                       f"{settings.n_ctx:,}: lower them or raise RAG_N_CTX")


@dataclass
class Answer:
    """One answered question: the `rag ask --json` object (docs/json.md), built here and nowhere else.

    `[n]` markers in `answer` refer to `citations[].n` and `passages[].n`. A question that could
    not be answered at all (a batch row whose LM call failed) is `Answer.failed`: no answer, no
    abstention decision, no provenance.
    """

    question: str | None
    answer: str | None
    abstained: bool | None
    citations: list[dict] = field(default_factory=list)
    passages: list[dict] = field(default_factory=list)
    provenance: dict | None = None
    shape: str | None = None  # list / yesno / specific (rag.answer.shapes)
    verdict: str | None = None  # yes / no / maybe for a yes/no question that was answered
    claims: list[dict] = field(default_factory=list)  # rag.answer.claims.Claim per answer sentence

    @classmethod
    def from_prediction(cls, question: str, pred: Any, provenance: dict | None = None) -> Answer:
        """From a `CitedRAG` prediction: its evidence hits become the numbered passages."""
        hits = pred.hits
        return cls(
            question=question,
            answer=pred.answer,
            abstained=bool(pred.abstained),
            citations=[{"n": n, "paper_id": hits[n - 1].paper.id, "title": hits[n - 1].paper.title}
                       for n in pred.citations],
            passages=[{"n": i, "paper_id": h.paper.id, "title": h.paper.title, "text": h.text,
                       "score": round(float(h.score), 6)} for i, h in enumerate(hits, 1)],
            provenance=provenance,
            shape=getattr(pred, "shape", None),
            verdict=getattr(pred, "verdict", None),
            claims=[c.to_json() for c in getattr(pred, "claims", None) or []],
        )

    @classmethod
    def failed(cls, question: str | None) -> Answer:
        return cls(question, None, None)

    def to_json(self) -> dict:
        return {"question": self.question, "answer": self.answer, "abstained": self.abstained,
                "citations": self.citations, "passages": self.passages, "provenance": self.provenance,
                "shape": self.shape, "verdict": self.verdict, "claims": self.claims}


class Pipeline:
    """One loaded session. The embedder is loaded on the first search, so a pipeline opened only
    to check or build the index (`rag index`) never loads it when the index is up to date."""

    def __init__(self, settings: Settings, index: Index, embedder_factory: Callable[[], Embedder],
                 lm: Any = None, program: CitedRAG | None = None, program_label: str = "baseline") -> None:
        self.settings = settings
        self.index = index
        self._embedder_factory = embedder_factory
        self.lm = lm
        self.program = program
        self.program_label = program_label
        self._streamer: Any = None

    @classmethod
    def open(cls, settings: Settings, *, embedder: Embedder | None = None, lm: Any = None,
             rebuild: str = "auto", progress: bool = False, need_lm: bool = True,
             disk_cache: bool = False, on_build: Callable[[Path], None] | None = None) -> Pipeline:
        """Load everything `ask` needs; `embedder` and `lm` may be injected (tests, other engines).

        Checks that cost nothing (the program file, the remote backend's settings) run before the
        index is built or the model loaded. `on_build(path)` is called before an index build starts.
        With RAG_ANSWER=extractive no LM is loaded at all: `ask` quotes the evidence (rag/answer/extractive.py).
        """
        use_lm = need_lm and settings.answer == "lm"
        auto = use_lm and settings.program == "auto"
        # a bad program file fails before the index or the model loads; `auto` chooses by the index's corpus
        # below, so every shipped file is checked now
        shipped = read_shipped() if auto else {}
        program_path = resolve_program(settings.program) if use_lm and not auto else None
        if program_path is not None:
            read_program_file(program_path)
        if use_lm and lm is None:
            backend(settings).check(settings)  # a missing API key should not cost an index build first
        if use_lm:
            check_context(settings)  # nor a prompt that cannot fit the local model
        factory: Callable[[], Embedder] = (lambda: embedder) if embedder is not None else \
            (lambda: get_embedder(settings.embed_model, settings.embed_backend, settings.cache_dir))
        index = open_index(settings, factory, rebuild=rebuild, progress=progress, on_build=on_build)
        pipe = cls(settings, index, factory)
        if need_lm:
            pipe.embedder  # noqa: B018 - load it now: the first question should not wait for it
        if need_lm and not use_lm:
            pipe.program_label = EXTRACTIVE
        if use_lm:
            pipe.lm = lm if lm is not None else make_lm(settings, disk_cache=disk_cache)
            pipe.program = CitedRAG(pipe.search, settings.min_score, select=pipe.select_evidence,
                                    threshold=settings.answerable_threshold,
                                    decline_unsupported=bool(settings.decline_unsupported))
            if auto:  # the newest shipped program that applies to this index's corpus
                program_path = choose_shipped(shipped, index.meta.get("corpus_hash") or "")
            pipe.program_label = load_program(pipe.program, program_path)
            if settings.is_set("min_score"):  # a minimum the user sets wins over the program's fitted ones
                pipe.program.min_scores = {}
            knn = pipe.program.knn
            if knn is not None and knn.dim is not None and (
                    knn.dim != index.meta["embed_dim"] or (knn.embedder and knn.embedder != settings.embed_model)):
                raise ProgramError(f"program {pipe.program_label} chooses its demos with {knn.embedder} "
                                   f"({knn.dim}-d) vectors, this index is embedded with {settings.embed_model} "
                                   f"({index.meta['embed_dim']}-d); refit it with `rag optimize --optimizer knn`")
        return pipe

    @cached_property
    def embedder(self) -> Embedder:
        emb = self._embedder_factory()
        if emb.dim != self.index.meta["embed_dim"]:
            raise RagError(f"embedder gives {emb.dim}-d vectors, index {self.index.name} holds "
                           f"{self.index.meta['embed_dim']}-d; rebuild with `rag index --rebuild`")
        return emb

    @cached_property
    def retriever(self) -> Retriever:
        return Retriever(self.index, self.embedder)

    def search(self, question: str, k: int | None = None, mode: str | None = None) -> SearchResult:
        """Retrieval for a question that may come from anyone (the CLI, the eval): validated here."""
        return self._retrieve(validate_question(question), k, mode)

    def _retrieve(self, query: str, k: int | None = None, mode: str | None = None) -> SearchResult:
        """Retrieval for a query already validated (or written by the rewrite step): the one route."""
        return self.retriever.search(query, k or self.settings.k, mode or self.settings.retrieval, self.settings.per_paper)

    def warm(self) -> int:
        """Read each answer predictor's fixed prompt prefix (instructions, demos) into the local model's cache,
        so the first question a user asks is as fast as the second; returns how many prefixes were warmed.
        A no-op on remote backends. The chat calls it at start-up (one-shot `rag ask` would only pay twice)."""
        from rag.answer.program import answer_adapter

        warm = getattr(getattr(self.lm, "engine", None), "warm", None)
        if warm is None or self.program is None:
            return 0
        adapter = answer_adapter(self.lm)
        predictors = [p for name, p in self.program.named_predictors()
                      if name != "verdict_judge" or self.program.verdict_source != "reply"]
        with self._context():
            for predictor in predictors:
                warm(adapter.format(predictor.signature, predictor.demos,
                                    dict.fromkeys(predictor.signature.input_fields, "")))
        return len(predictors)

    def select_evidence(self, question: str, result: SearchResult, shape: str) -> list[Hit]:
        """The program's evidence step: the best sentences of the retrieved papers, under the token budget."""
        return select_evidence(self.index, result, question, budget=self.settings.evidence_tokens, shape=shape)

    def _context(self):
        # The adapter is set here, around the whole run, and not only inside the program: a streamed answer is
        # read by DSPy's stream listeners in this outer context, and they find the answer field by the adapter.
        return dspy.context(lm=self.lm, adapter=answer_adapter(self.lm), track_usage=True,
                            max_history_size=HISTORY_KEEP, max_trace_size=HISTORY_KEEP)

    def ask(self, question: str) -> dict:
        """Answer one question; returns the `rag ask --json` object (`Answer.to_json()`)."""
        q = validate_question(question)
        t0 = time.perf_counter()
        if self.settings.answer == EXTRACTIVE:
            found = self._retrieve(q)
            return self._result(q, self.extractive(q, found), time.perf_counter() - t0, extractive=True)
        if self.program is None:
            raise RagError("this pipeline was opened without a language model")
        found = self._retrieve(q)
        try:
            with self._context():
                pred = self.program(question=q, result=found)
        except Exception as e:  # noqa: BLE001 - backends raise anything; name the setting to fix
            error = self._lm_failure(e)
            return self._result(q, self.extractive(q, found), time.perf_counter() - t0, fallback=error)
        pred, replaced = self._instead_of_decline(q, found, pred)
        return self._result(q, pred, time.perf_counter() - t0, replaced=replaced)

    def extractive(self, question: str, found: SearchResult) -> Any:
        """The extractive answer (rag/answer/extractive.py) from a retrieval: no LM, about a millisecond."""
        return extractive_answer(question, found, self.index, budget=self.settings.evidence_tokens,
                                 min_score=self.settings.min_score)

    def _instead_of_decline(self, question: str, found: SearchResult, pred: Any) -> tuple[Any, bool]:
        """The extractive answer in place of an answer the claim checks declined, where the program's
        `declined_fallback` sets a minimum similarity for the question's shape and the retrieval reaches it
        (fitted on train: eval/fit_fallback.py); the model's declined answer stays in `declined_draft`."""
        limits = getattr(self.program, "declined_fallback", None) or {}
        limit = limits.get(getattr(pred, "shape", None))
        if (not pred.abstained or pred.abstain_reason not in CLAIM_CHECK_DECLINES or limit is None
                or found.best_similarity < limit):
            return pred, False
        quoted = self.extractive(question, found)
        if quoted.abstained:
            return pred, False
        quoted.draft_answer, quoted.draft_claims = pred.draft_answer, pred.draft_claims
        # the declined answer's label readings stay on record (the verdict decisions are refitted from them)
        for name in ("verdict_probs", "judge_probs", "sampled_verdict"):
            setattr(quoted, name, getattr(pred, name, None))
        if pred.shape == "yesno" and getattr(self.program, "fallback_verdict", "drop") == "keep":
            quoted.answer, quoted.verdict = with_verdict(quoted.answer, parse_verdict(pred.draft_answer or ""))
        with contextlib.suppress(Exception):  # the model was called: its tokens count
            quoted.set_lm_usage(pred.get_lm_usage())
        return quoted, True

    def _lm_failure(self, e: Exception) -> LMError:
        """The LMError an answer step failed with, when RAG_FALLBACK lets the extractive answer stand in for
        the model's; anything else (another RagError, or the fallback off) is raised."""
        if isinstance(e, RagError) and not isinstance(e, LMError):
            raise e
        error = describe_lm_error(e, self.settings)
        if self.settings.fallback != EXTRACTIVE:
            raise error from None
        log.warning("the LM failed (%s); answering with the evidence itself (RAG_FALLBACK=extractive)", error)
        return error

    def ask_stream(self, question: str, history: list[tuple[str, str]] | None = None, *,
                   k: int | None = None, mode: str | None = None) -> Iterator[dict]:
        """Answer one question as a stream of events, for the chat.

        Events: {"type": "status", "text"}; {"type": "rewritten", "query"} when a follow-up was
        rewritten with `history` (earlier (question, answer) pairs) into a standalone query;
        {"type": "passages", "hits"}; {"type": "evidence", "text", "hits"} at once after them (the extractive
        answer: the best evidence sentences, cited [n] into `hits`, the passages the model reads), unless the
        program will abstain without the model; {"type": "token", "text"} as the answer is written; and last
        {"type": "done", "result", "hits", "query"}, whose result is the `rag ask --json` object
        (its answer is the checked one, which can differ from the streamed text).
        """
        q = validate_question(question)
        if self.settings.answer == EXTRACTIVE:
            yield from self._extractive_stream(q, k, mode)
            return
        if self.program is None:
            raise RagError("this pipeline was opened without a language model")
        t0 = time.perf_counter()
        found = None
        try:
            query = q
            if history:
                yield {"type": "status", "text": "Reading the conversation..."}
                try:
                    with self._context():
                        query = rewrite_question(q, history)
                except Exception as e:  # noqa: BLE001 - a failed rewrite must not lose the question
                    log.warning("could not rewrite the follow-up (%s); searching with it as asked", e)
                yield {"type": "rewritten", "query": query}
            yield {"type": "status", "text": "Searching the papers..."}
            found = self._retrieve(query, k, mode)
            yield {"type": "passages", "hits": found.hits}
            yield from self._evidence_event(query, found)
            pred = None
            json_reply = isinstance(answer_adapter(self.lm), dspy.JSONAdapter)
            raw, shown = "", ""
            for chunk in self._relay(lambda: self._streaming_program()(question=query, result=found)):
                if isinstance(chunk, dspy.Prediction):
                    pred = chunk
                elif isinstance(chunk, StreamResponse) and chunk.chunk:
                    raw += chunk.chunk
                    text = json_string_so_far(raw) if json_reply else raw
                    if text.startswith(shown) and len(text) > len(shown):
                        yield {"type": "token", "text": text[len(shown):]}
                        shown = text
        except Exception as e:  # noqa: BLE001 - as in ask()
            if found is None:  # retrieval itself failed: nothing to quote
                raise e if isinstance(e, RagError) else describe_lm_error(e, self.settings) from None
            error = self._lm_failure(e)
            pred = self.extractive(query, found)
            result = self._result(q, pred, time.perf_counter() - t0, k, mode, fallback=error)
            yield {"type": "done", "result": result, "hits": pred.hits, "query": query}
            return
        pred, replaced = self._instead_of_decline(query, found, pred)
        result = self._result(q, pred, time.perf_counter() - t0, k, mode, replaced=replaced)
        yield {"type": "done", "result": result, "hits": pred.hits, "query": query}

    def _evidence_event(self, query: str, found: SearchResult) -> Iterator[dict]:
        """The evidence the model is about to read, quoted and cited (the extractive answer), shown while it writes;
        nothing when the program will abstain without the model anyway."""
        preview = self.extractive(query, found)
        if not preview.abstained:
            yield {"type": "evidence", "text": preview.answer, "hits": preview.hits}

    def _extractive_stream(self, q: str, k: int | None, mode: str | None) -> Iterator[dict]:
        """`ask_stream` under RAG_ANSWER=extractive: no rewrite (that needs a model), no tokens, one answer."""
        t0 = time.perf_counter()
        yield {"type": "status", "text": "Searching the papers..."}
        found = self._retrieve(q, k, mode)
        yield {"type": "passages", "hits": found.hits}
        pred = self.extractive(q, found)
        result = self._result(q, pred, time.perf_counter() - t0, k, mode, extractive=True)
        yield {"type": "done", "result": result, "hits": pred.hits, "query": q}

    def _relay(self, make_stream: Callable[[], Iterator[Any]]) -> Iterator[Any]:
        """Run a stream in a worker thread under this pipeline's DSPy context and relay its items.

        The consumer (a web server) may resume this generator from a different thread or context
        each time, and DSPy's context must be entered and left in the same one.
        """
        items: queue.Queue = queue.Queue()
        done = object()

        def work() -> None:
            try:
                with self._context():
                    for item in make_stream():
                        items.put(item)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                items.put(e)
            finally:
                items.put(done)

        threading.Thread(target=work, name="rag-answer", daemon=True).start()
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item

    def _streaming_program(self):
        if self._streamer is None:
            # The answer text streams from the predictors that write one (a list answer is rendered, not written).
            # allow_reuse: the streamer serves every question of the session; without it a listener goes
            # quiet after its first answer.
            listeners = [StreamListener(field, predict=getattr(self.program, name), predict_name=name,
                                        allow_reuse=True) for name, field in TEXT_FIELDS.items()]
            for listener in listeners:  # it finds an adapter's field markers by class name; ours speaks JSON
                listener.adapter_identifiers[CompactJSONAdapter.__name__] = listener.adapter_identifiers["JSONAdapter"]
            self._streamer = dspy.streamify(self.program, stream_listeners=listeners, async_streaming=False)
        return self._streamer

    def _result(self, q: str, pred: Any, latency: float, k: int | None = None, mode: str | None = None, *,
                extractive: bool = False, fallback: LMError | None = None, replaced: bool = False) -> dict:
        """The `rag ask --json` object; `extractive` (the mode), `fallback` (the LM's error) or `replaced` (the
        checks declined the model's answer and the evidence stands in) when no LM wrote it."""
        _trim_global_history()
        prompt_tokens, completion_tokens = _usage(pred)
        provenance = {
            "lm": EXTRACTIVE if extractive or fallback is not None or replaced else self.lm_label,
            "index": self.index.name,
            "program": self.program_label,
            "retrieval": mode or self.settings.retrieval,
            "k": k or self.settings.k,
            "latency_s": round(latency, 3),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "p_answerable": None if getattr(pred, "p_answerable", None) is None else round(pred.p_answerable, 4),
            "abstain_reason": getattr(pred, "abstain_reason", None),
            # yes/no: the label probabilities read at the verdict (None without logprobs) and the model's
            # sampled verdict; specific: whether a restated answer was replaced by a quoted evidence sentence
            "verdict_probs": _rounded(getattr(pred, "verdict_probs", None)),
            "sampled_verdict": getattr(pred, "sampled_verdict", None),
            "judge_probs": _rounded(getattr(pred, "judge_probs", None)),
            "restated": bool(getattr(pred, "restated", False)),
            "declined_draft": _declined_draft(pred),
            "fallback": EXTRACTIVE if fallback is not None or replaced else None,
            "lm_error": str(fallback) if fallback is not None else None,
        }
        return Answer.from_prediction(q, pred, provenance).to_json()

    @property
    def lm_label(self) -> str:
        """What writes the answers: the configured LM's name, or "extractive" under RAG_ANSWER=extractive."""
        return EXTRACTIVE if self.settings.answer == EXTRACTIVE else lm_label(self.settings)


def _rounded(probs: dict | None) -> dict | None:
    return None if not probs else {k: round(float(v), 4) for k, v in probs.items()}


def _declined_draft(pred: Any) -> dict | None:
    """The answer the model wrote and the checks declined (unsupported_claim, off_question), with its claims."""
    answer = getattr(pred, "draft_answer", None)
    if not answer:
        return None
    return {"answer": answer, "claims": [c.to_json() for c in getattr(pred, "draft_claims", None) or []]}


def _trim_global_history() -> None:
    from dspy.clients import base_lm

    del base_lm.GLOBAL_HISTORY[:-HISTORY_KEEP]


def _usage(pred: Any) -> tuple[int, int]:
    try:
        usage = pred.get_lm_usage() or {}
    except Exception:  # noqa: BLE001 - usage tracking is best effort
        usage = {}
    prompt = sum(int(u.get("prompt_tokens") or 0) for u in usage.values())
    completion = sum(int(u.get("completion_tokens") or 0) for u in usage.values())
    return prompt, completion
