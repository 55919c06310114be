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
that wiring are ``chatlm.evaluation.qa_cli``; this module takes the service it is given.

All figures are fractions in [0, 1] (the official script prints percentages).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from chatlm.knowledge.answer import short_form
from chatlm.knowledge.squad import Article, Question, answer_in_chunks, exact_match, f1, normalize_answer
from chatlm.prompts import NOT_FOUND, grounded_question

MODES = ("rag", "oracle", "retrieval-only")
MAX_NEW_TOKENS = 32
N_EXAMPLES = 4
"""Example predictions kept per article in the report."""

ABSTAIN_MARKERS = tuple(
    normalize_answer(s)
    for s in (
        NOT_FOUND, "could not find", "couldn't find", "cannot find", "can't find", "can not find",
        "not found in", "do not contain the answer", "does not contain the answer",
        "not mentioned in the passage", "no answer",
    )
)
"""Normalised phrases that mark an answer as the model declining (the prompt asks for NOT_FOUND)."""

_TRAILING_CITES = re.compile(r"(?:\s*\[\s*\d+(?:\s*[,;-]\s*\d+)*\s*\])+\s*$")
_LEADING_CITES = re.compile(r"^(?:\[\s*\d+(?:\s*[,;-]\s*\d+)*\s*\]\s*)+")
_LEADING_LABEL = re.compile(
    r"^(?:the\s+)?(?:(?:short|shortest|exact|final)\s+)*(?:answer|phrase)"
    r"(?:\s+(?:to|for)\s+(?:this|the|your)\s+question)?\s*(?:is\s*:?|:)\s*(?:that\s+)?",
    re.IGNORECASE,
)
"""A label the small model puts before its answer ("The answer to this question is: ...")."""
_QUOTES = "\"'`“”‘’«»"
_STOPWORDS = (
    "a an the of in on at to for from by with and or but is are was were be been being do does did has have had "
    "what which who whom whose when where why how that this these those it its as into than then there their "
    "they he she his her him them i we you not no"
)
STOPWORDS = frozenset(_STOPWORDS.split())
"""Words that add nothing to an answer (articles, auxiliaries, prepositions, pronouns, wh-words)."""


# ---- predictions ------------------------------------------------------------------------------
def is_abstention(text: str) -> bool:
    """Whether an answer declines: it contains NOT_FOUND or a close variant, once normalised."""
    norm = f" {normalize_answer(text)} "
    return any(f" {m} " in norm for m in ABSTAIN_MARKERS)


def clean_answer(text: str) -> str:
    """The prediction to score: "" for an abstention, else the first line without labels,
    citation markers like ``[1]``, surrounding quotes and trailing periods."""
    s = text.strip()
    if not s or is_abstention(s):
        return ""
    s = next(line for line in s.splitlines() if line.strip()).strip()
    previous = None
    while s != previous:
        previous = s
        s = _LEADING_LABEL.sub("", s)
        s = _TRAILING_CITES.sub("", s)
        s = _LEADING_CITES.sub("", s)
        s = s.strip().rstrip(".;,:").strip()
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
            s = s[1:-1].strip()
        elif sum(ch in _QUOTES for ch in s) == 1 and (s[0] in _QUOTES or s[-1] in _QUOTES):
            s = s.strip(_QUOTES).strip()  # an unbalanced quote at one end
    return s


def supported(answer: str, passages: Iterable[str]) -> bool:
    """Whether the normalised answer occurs, as whole words, in one of the passages (verbatim)."""
    norm = normalize_answer(answer)
    if not norm:
        return True
    return any(f" {norm} " in f" {normalize_answer(p)} " for p in passages)


def new_words(answer: str, question: str) -> list[str]:
    """Content words of the answer that the question does not already contain: what it adds."""
    asked = set(normalize_answer(question).split())
    return [w for w in normalize_answer(answer).split() if w not in asked and w not in STOPWORDS]


def grounded(words: Sequence[str], passages: Iterable[str]) -> bool:
    """Whether every one of ``words`` occurs in the passages (normalised, as whole words)."""
    vocab = {w for p in passages for w in normalize_answer(p).split()}
    return all(w in vocab for w in words)


CHECKS = ("none", "echo", "grounded", "verbatim")
"""Answer checks, each stricter than the one before (see :class:`AbstainRule`)."""
DEFAULT_CHECK = "echo"
DEFAULT_MIN_DENSE = 0.5
"""Chosen on the first article of the SQuAD sample only (see bench/qa_eval.md): the most no-answer
accuracy for at most 3 points of answerable F1 there."""


@dataclass(frozen=True)
class AbstainRule:
    """How the harness turns a model answer into "no answer", besides the model saying NOT_FOUND.

    ``check``: ``none``; ``echo`` abstains when the answer adds no content word to the question
    ("France is a region of"); ``grounded`` also when a word it adds is not in the passages the model
    was shown (made up); ``verbatim`` when the whole answer is not copied from those passages.
    ``min_dense``: abstain when no chunk of the text reaches this cosine similarity to the question.
    """

    check: str = DEFAULT_CHECK
    min_dense: float | None = DEFAULT_MIN_DENSE

    def __post_init__(self) -> None:
        if self.check not in CHECKS:
            raise ValueError(f"check must be one of {', '.join(CHECKS)}")

    def decide(self, record: Record) -> str | None:
        """The reason to abstain on this record, or None to keep its answer."""
        if record.error and not record.raw:
            return "error"
        if record.model_abstained:
            return "model"
        if not record.answer:
            return "empty"
        if self.min_dense is not None and record.top_dense is not None and record.top_dense < self.min_dense:
            return "min_dense"
        level = CHECKS.index(self.check)
        if level >= CHECKS.index("echo") and not record.new_words:
            return "echo"
        if level >= CHECKS.index("grounded") and not record.grounded:
            return "grounded"
        if level >= CHECKS.index("verbatim") and not record.supported:
            return "verbatim"
        return None

    def describe(self) -> str:
        parts = ["model"] + ([self.check] if self.check != "none" else [])
        if self.min_dense is not None:
            parts.append(f"min_dense={self.min_dense:g}")
        return "+".join(parts)


def variants(records: Sequence[Record], min_dense: float = DEFAULT_MIN_DENSE) -> list[dict[str, Any]]:
    """The abstention trade-off on the same answers: every check, without and with ``min_dense``."""
    rows = []
    for threshold in (None, min_dense):
        for check in CHECKS:
            rule = AbstainRule(check=check, min_dense=threshold)
            scored = [replace(r) for r in records]
            for r in scored:
                r.apply(rule)
            s = score(scored)
            rows.append({"rule": rule.describe(), **{k: s[k] for k in (
                "has_ans_f1", "has_ans_exact", "no_ans_accuracy", "f1", "exact_match", "has_ans_abstained")}})
    return rows


# ---- records and scores -----------------------------------------------------------------------
@dataclass
class Record:
    """One question: what was retrieved and asked, what came back, and how it was decided."""

    id: str
    article: str
    question: str
    answers: list[str]
    is_impossible: bool
    paragraph_index: int
    found: bool | None = None
    """Gold answer inside the top-k chunks (None for unanswerable questions)."""
    top_dense: float | None = None
    top_bm25: float | None = None
    raw: str = ""
    answer: str = ""
    """The cleaned answer before the abstention rule."""
    model_abstained: bool = False
    new_words: list[str] = field(default_factory=list)
    """Content words the answer adds to the question."""
    grounded: bool = True
    """Every added word occurs in the passages shown."""
    supported: bool = True
    """The whole answer occurs verbatim in the passages shown."""
    abstained_by: str | None = None
    prediction: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None
    em: float = 0.0
    f1: float = 0.0
    extractive: bool = False
    """Answered by the chat's extractive path (a copied span, or its decline)."""
    support_score: float | None = None
    """The extractive path's abstention signal: question-sentence agreement."""
    decline_score: float | None = None
    """A reader's first-token log p(decline) - log p(copy), when a reader answered."""
    span_logprob: float | None = None
    """log p of the copied span's first token (how sure the model was of it)."""
    span: str = ""
    """The copied span before the decline rule (what it would have answered)."""
    shown: list[str] = field(default_factory=list, repr=False)
    """Texts of the passages the model was shown (not written to the report)."""

    def apply(self, rule: AbstainRule) -> None:
        self.abstained_by = rule.decide(self)
        self.prediction = "" if self.abstained_by else self.answer
        self.em = exact_match(self.prediction, self.answers)
        self.f1 = f1(self.prediction, self.answers)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def score(records: Sequence[Record], *, generated: bool = True) -> dict[str, Any]:
    """Official SQuAD v2 figures (fractions) plus retrieval recall over answerable questions."""
    has = [r for r in records if not r.is_impossible]
    no = [r for r in records if r.is_impossible]
    out: dict[str, Any] = {
        "n_questions": len(records), "n_answerable": len(has), "n_unanswerable": len(no),
        "retrieval_recall_at_k": _mean([float(bool(r.found)) for r in has]),
    }
    if generated:
        out.update({
            "exact_match": _mean([r.em for r in records]),
            "f1": _mean([r.f1 for r in records]),
            "has_ans_exact": _mean([r.em for r in has]),
            "has_ans_f1": _mean([r.f1 for r in has]),
            "no_ans_accuracy": _mean([float(r.prediction == "") for r in no]),
            "has_ans_abstained": _mean([float(r.prediction == "") for r in has]),
            "abstained_by": _count(r.abstained_by for r in records if r.abstained_by),
            "errors": sum(1 for r in records if r.error),
            "support_auroc": auroc([r.support_score for r in has], [r.support_score for r in no]),
            "decline_auroc": auroc([-r.decline_score for r in has if r.decline_score is not None],
                                   [-r.decline_score for r in no if r.decline_score is not None]),
        })
    else:
        out.update(dict.fromkeys(("exact_match", "f1", "has_ans_exact", "has_ans_f1", "no_ans_accuracy"), None))
    return out


def auroc(positives: Sequence[float | None], negatives: Sequence[float | None]) -> float | None:
    """P(score of an answerable question > score of an unanswerable one), ties counting half."""
    pos = [p for p in positives if p is not None]
    neg = [n for n in negatives if n is not None]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return round(wins / (len(pos) * len(neg)), 4)


def _count(items: Iterable[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[str(item)] = counts.get(str(item), 0) + 1
    return dict(sorted(counts.items()))


# ---- the run ----------------------------------------------------------------------------------
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
    uid = service.user_id()
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
        home = service.new_conversation(uid)
        ids = [service.library.load(user_id=uid, conversation_id=home.id, name=a.title, text=a.text).id
               for a, _ in chosen]
        service.library.wait_for_embeddings()
        shared = (home, ids)
        load_seconds += time.perf_counter() - t0
    try:
        for article, questions in chosen:
            t0 = time.perf_counter()
            if shared is None:
                home = service.new_conversation(uid)
                doc_ids = [service.library.load(user_id=uid, conversation_id=home.id, name=article.title,
                                                text=article.text).id]
                service.library.wait_for_embeddings()
            else:
                home, doc_ids = shared
            built = service.library.index_for(home.id)
            fusion = fusion and built is not None and built.index.has_dense
            load_seconds += time.perf_counter() - t0
            chat = _new_chat(service, uid, doc_ids) if options.conversation else None

            def one(q: Question, article: Article = article, home_id: int = home.id,
                    doc_ids: list[int] = doc_ids, chat: int | None = chat) -> Record:
                rec = _retrieve(service, article, q, home_id, options.k)
                try:
                    if options.mode == "rag":
                        _answer_rag(service, rec, q, uid, chat or _new_chat(service, uid, doc_ids), params, options)
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


def _new_chat(service: Any, uid: int, doc_ids: Sequence[int]) -> int:
    """A conversation with the documents attached, as a user who loaded them has."""
    conv = service.new_conversation(uid)
    for doc_id in doc_ids:
        service.library.attach(user_id=uid, conversation_id=conv.id, document_id=doc_id)
    return int(conv.id)


def _answer_rag(service: Any, rec: Record, q: Question, uid: int, conversation_id: int, params: Any,
                options: Options) -> None:
    """Ask through the chat's own path: a chat per question, or (``--conversation``) one for all."""
    reply = service.send(uid, conversation_id, q.question, params, adapter=options.adapter, k=options.k,
                         short=True)
    raw = reply.run()
    _finish(rec, raw, reply.generation, rec.shown)
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
