"""SQuAD v2 question answering over knowledge texts, measured through the app's own code paths.

``python -m chatlm eval qa --squad FILE --json OUT`` loads each article of a SQuAD v2.0 file as one
knowledge text (its paragraphs joined by blank lines) into a conversation of a *temporary* database,
waits for the dense embeddings (so BM25+dense fusion is what is measured), and asks every question
through :meth:`ChatService.send` with the short grounded prompt and greedy decoding. Questions are
submitted concurrently (``--batch``, default the scheduler's ``max_batch``) so the batching
scheduler is exercised as in serving. Answers are scored with the official SQuAD v2 rules: an
unanswerable question is right only when the prediction is empty (an abstention).

Modes: ``rag`` (the app: retrieve top-k, answer), ``oracle`` (the same model and prompt with the
gold paragraph alone as passage [1]: the ceiling of the reader) and ``retrieval-only`` (no model:
recall@k and timing). The model comes from the normal settings (``CHATLM_MODEL``, the model cache in
``CHATLM_DATA_DIR``); only the database is swapped for a throwaway SQLite file. The command line and
that wiring are ``chatlm.cli.qa``; this module takes the service it is given.

All figures are fractions in [0, 1] (the official script prints percentages).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chatlm.chat.prompts import grounded_question
from chatlm.evaluation.scoring import (
    DEFAULT_MIN_DENSE,
    AbstainRule,
    Record,
    clean_answer,
    grounded,
    is_abstention,
    new_words,
    score,
    supported,
    variants,
)
from chatlm.identity.accounts import Actor
from chatlm.knowledge.answer import short_form
from chatlm.knowledge.squad import Article, Question, answer_in_chunks

MODES = ("rag", "oracle", "retrieval-only")
MAX_NEW_TOKENS = 32
N_EXAMPLES = 4
"""Example predictions kept per article in the report."""

@dataclass
class Options:
    squad: Path
    mode: str = "rag"
    k: int = 3
    limit: int | None = None
    adapter: str | None = None
    max_new_tokens: int = MAX_NEW_TOKENS
    batch: int | None = None
    """Questions in flight at once; None means the scheduler's ``max_batch``."""
    rule: AbstainRule = field(default_factory=AbstainRule)
    details: bool = False
    progress: bool = True
    split: str = "all"
    together: bool = False
    """Every article in one knowledge base (retrieval must find the right one among them)."""
    conversation: bool = False
    """Each article's questions asked in sequence in one chat."""


SPLITS = ("all", "calibration", "report")


def split_questions(questions: Sequence[Question], split: str) -> list[Question]:
    """The shared data's convention: within an article, in file order, the first half of the
    answerable and the first half of the unanswerable questions calibrate; the rest report."""
    if split == "all":
        return list(questions)
    has = [q for q in questions if not q.is_impossible]
    no = [q for q in questions if q.is_impossible]
    calibration = {q.id for q in has[: len(has) // 2] + no[: len(no) // 2]}
    return [q for q in questions if (q.id in calibration) == (split == "calibration")]


def select(articles: Sequence[Article], limit: int | None,
           split: str = "all") -> list[tuple[Article, list[Question]]]:
    """Each article with the questions of ``split`` (the first ``limit`` of those when given)."""
    out = []
    for a in articles:
        chosen = split_questions(a.questions, split)
        out.append((a, chosen[:limit] if limit else chosen))
    return out


def evaluate(service: Any, articles: Sequence[Article], options: Options) -> dict[str, Any]:
    """Run the benchmark with a wired :class:`ChatService` (its backend may be None for
    ``retrieval-only``) and return the report."""
    from tqdm import tqdm

    from chatlm.engine.params import SamplingParams
    from chatlm.errors import ChatLMError, InputError

    if options.mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}")
    if options.k < 1:
        raise InputError("--k must be at least 1")
    generating = options.mode != "retrieval-only"
    if generating and options.adapter not in (None, "", "base") and options.adapter not in service.adapters.names():
        loaded = ", ".join(service.adapters.names()) or "none"
        raise InputError(f"No adapter named {options.adapter!r} is loaded (loaded: {loaded}).")
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=options.max_new_tokens)
    params = params.clamped(service.settings.max_new_tokens)
    batch = options.batch or service.settings.max_batch
    chosen = select(articles, options.limit, options.split)
    actor = service.actor()
    start = time.perf_counter()
    bar = tqdm(total=sum(len(qs) for _, qs in chosen), desc=f"eval qa ({options.mode})", unit="q",
               file=sys.stderr, disable=not options.progress, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)
    records: list[Record] = []
    per_article: list[dict[str, Any]] = []
    load_seconds = 0.0
    fusion = True
    shared: tuple[Any, list[int]] | None = None
    if options.together:  # every article in one knowledge base, as a user with many documents has
        t0 = time.perf_counter()
        home = service.new_conversation(actor)
        ids = [service.library.load(actor=actor, conversation_id=home.id, name=a.title, text=a.text).id
               for a, _ in chosen]
        service.library.wait_for_embeddings()
        shared = (home, ids)
        load_seconds += time.perf_counter() - t0
    try:
        for article, questions in chosen:
            t0 = time.perf_counter()
            if shared is None:
                home = service.new_conversation(actor)
                doc_ids = [service.library.load(actor=actor, conversation_id=home.id, name=article.title,
                                                text=article.text).id]
                service.library.wait_for_embeddings()
            else:
                home, doc_ids = shared
            built = service.library.index_for(home.id)
            fusion = fusion and built is not None and built.index.has_dense
            load_seconds += time.perf_counter() - t0
            chat = _new_chat(service, actor, doc_ids) if options.conversation else None

            def one(q: Question, article: Article = article, home_id: int = home.id,
                    doc_ids: list[int] = doc_ids, chat: int | None = chat) -> Record:
                rec = _retrieve(service, article, q, home_id, options.k)
                try:
                    if options.mode == "rag":
                        _answer_rag(service, rec, q, actor, chat or _new_chat(service, actor, doc_ids), params, options)
                    elif options.mode == "oracle":
                        _answer_oracle(service, rec, article, q, params, options)
                except ChatLMError as exc:  # e.g. a prompt too long: counted, not fatal
                    rec.error = exc.message
                if generating:
                    rec.apply(options.rule)
                bar.update(1)
                return rec

            t1 = time.perf_counter()
            # one chat: its questions in sequence, each after the answer before it
            with ThreadPoolExecutor(max_workers=1 if chat or not generating else batch,
                                    thread_name_prefix="eval-qa") as pool:
                done = list(pool.map(one, questions))
            records.extend(done)
            per_article.append({"title": article.title, "chunks": len(built.chunks) if built else 0,
                                **score(done, generated=generating),
                                "seconds": round(time.perf_counter() - t1, 2)})
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    backend = service.backend
    report: dict[str, Any] = {
        "mode": options.mode,
        "model": backend.model_id if backend is not None else service.settings.model,
        "adapter": options.adapter,
        "k": options.k,
        "limit": options.limit,
        "split": options.split,
        "together": options.together,
        "conversation": options.conversation,
        "abstain_threshold": service.settings.abstain_threshold,
        "reader": (options.adapter if service.adapters.reads(options.adapter) else None) if options.adapter
        else service.adapters.reader,
        "squad": str(options.squad),
        "n_articles": len(chosen),
        **score(records, generated=generating),
        "abstain_rule": options.rule.describe() if generating else None,
        "fusion": fusion,
        "batch": batch if generating else None,
        "max_new_tokens": params.max_new_tokens if generating else None,
        "seconds": round(seconds, 2),
        "seconds_loading": round(load_seconds, 2),
        "questions_per_second": round(len(records) / seconds, 3) if seconds else None,
        "per_article": per_article,
        "examples": _examples(records) if generating else [],
        "abstain_variants": (variants(records, options.rule.min_dense or DEFAULT_MIN_DENSE)
                             if generating else []),
    }
    if options.details:
        report["questions"] = [{k: v for k, v in asdict(r).items() if k != "shown"} for r in records]
    return report


def _retrieve(service: Any, article: Article, q: Question, conversation_id: int, k: int) -> Record:
    rec = Record(id=q.id, article=article.title, question=q.question, answers=list(q.answers),
                 is_impossible=q.is_impossible, paragraph_index=q.paragraph_index)
    passages = service.library.retrieve(conversation_id, q.question, k=k)
    if not q.is_impossible:
        rec.found = answer_in_chunks(q.answers, [p.text for p in passages])
    built = service.library.index_for(conversation_id)
    if built is not None and len(built.index):
        rec.top_bm25 = round(float(built.index.bm25_scores(q.question).max()), 4)
        if built.index.has_dense:
            rec.top_dense = round(float(built.index.dense_scores(q.question).max()), 4)
    rec.shown = [p.text for p in passages]
    return rec


def _finish(rec: Record, raw: str, generation: Any, shown: Sequence[str]) -> None:
    rec.raw = raw
    rec.finish_reason = generation.finish_reason
    rec.completion_tokens = generation.completion_tokens
    rec.error = generation.error
    rec.model_abstained = is_abstention(raw)
    rec.answer = clean_answer(raw)
    rec.new_words = new_words(rec.answer, rec.question)
    rec.grounded = grounded(rec.new_words, shown)
    rec.supported = supported(rec.answer, shown)


def _new_chat(service: Any, actor: Actor, doc_ids: Sequence[int]) -> int:
    """A conversation with the documents attached, as a user who loaded them has."""
    conv = service.new_conversation(actor)
    for doc_id in doc_ids:
        service.library.attach(actor=actor, conversation_id=conv.id, document_id=doc_id)
    return int(conv.id)


def _answer_rag(service: Any, rec: Record, q: Question, actor: Actor, conversation_id: int, params: Any,
                options: Options) -> None:
    """Ask through the chat's own path: a chat per question, or (``--conversation``) one for all."""
    reply = service.send(actor, conversation_id, q.question, params, adapter=options.adapter, k=options.k,
                         short=True)
    raw = reply.run()
    _finish(rec, raw, reply.generation, rec.shown)
    rec.adapter = reply.adapter
    if reply.extract is not None:  # the chat's own answer: its span, or its decline
        rec.extractive, rec.support_score = True, reply.support_score
        rec.decline_score = reply.generation.decline_score
        rec.span_logprob = reply.generation.span_logprob
        rec.span = short_form(reply.generation.text) if reply.generation.finish_reason in ("stop", "length") else ""
        rec.answer = reply.short_answer or ""
        rec.model_abstained = not rec.answer
        rec.new_words = new_words(rec.answer, rec.question)
        rec.grounded = grounded(rec.new_words, rec.shown)
        rec.supported = supported(rec.answer, rec.shown)


def _answer_oracle(service: Any, rec: Record, article: Article, q: Question, params: Any,
                   options: Options) -> None:
    gold = article.paragraphs[q.paragraph_index]
    messages = oracle_messages(service.settings.system_prompt, q.question, article.title, gold)
    generation = service.generate(messages, params, adapter=None if options.adapter == "base" else options.adapter)
    try:
        raw = generation.wait()
    except Exception:  # the error is recorded on the generation
        raw = generation.text
    rec.shown = [gold]
    _finish(rec, raw, generation, rec.shown)


def oracle_messages(system_prompt: str, question: str, title: str, paragraph: str) -> list[dict[str, str]]:
    """The prompt ``send`` would build with the gold paragraph as the only passage [1]."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    return [*system, {"role": "user",
                      "content": grounded_question(question, [(1, title, paragraph)], short=True)}]


def _examples(records: Sequence[Record]) -> list[dict[str, Any]]:
    keep: list[Record] = []
    for title in dict.fromkeys(r.article for r in records):
        mine = [r for r in records if r.article == title]
        keep += [r for r in mine if not r.is_impossible][: N_EXAMPLES // 2]
        keep += [r for r in mine if r.is_impossible][: N_EXAMPLES // 2]
    return [{"id": r.id, "question": r.question, "gold": r.answers, "raw": r.raw,
             "prediction": r.prediction, "abstained_by": r.abstained_by, "f1": round(r.f1, 4)}
            for r in keep]


def _registered_adapter(settings: Any, name: str | None) -> tuple[str | None, bool]:
    """The folder of an adapter in the user's registry (the harness answers from a scratch database,
    so the adapter is looked up where rounds registered it; None for the base model), and whether it
    is a reader (a reader round, or a round continued from one)."""
    if not name:
        return None, False
    from chatlm.engine.adapters import check_files
    from chatlm.errors import NotFoundError, StorageError
    from chatlm.store import db, registry

    engine = db.make_engine(settings.db_url)
    try:
        with db.transaction(db.make_sessionmaker(engine)) as s:
            path, reads = registry.get_adapter(s, name=name).path, registry.is_reader(s, name)
    except StorageError as exc:  # no database, or one from before the registry existed
        raise NotFoundError(f"No adapter named {name!r}: there is no adapter registry at {settings.db_url}.") from exc
    finally:
        engine.dispose()
    check_files(Path(path))
    return path, reads


class QueryCache:
    """The embedder with its query vectors memoised: the harness's own retrieval, the one inside
    ``send`` and the similarity signal then embed each question once, not three times."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self._vectors: dict[str, Any] = {}
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        return self._embedder.embed(texts, *args, **kwargs)

    def embed_query(self, text: str) -> Any:
        with self._lock:
            vector = self._vectors.get(text)
        if vector is None:
            vector = self._embedder.embed_query(text)
            with self._lock:
                self._vectors[text] = vector
        return vector
