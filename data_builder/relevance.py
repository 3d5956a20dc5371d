"""Scene relevance per query (SPEC section 1): a 1-5 score and a reason for every scene.

Three scorers, one interface (`score(ctx, queries) -> [ScoringResult]`):

- `llm` (the paper's): the annotating LLM reads the video summary, the scene's chapter and caption, and the
  query (with its options and, when known, the correct answer: the annotator is allowed to know it, and it
  tells it what evidence to look for), and answers `{"score": 1-5, "reason": "..."}`. The answer is parsed
  with pydantic; a malformed one is asked again with the reason (at most `max_reasks` times), then recorded in
  the query's `failures` and given NO score: a guessed score would become a wrong training label.
- `embedding`: cosine similarity between the query and each caption (sentence-transformers), a cheap
  alternative when no strong LLM is available.
- `lexical`: BM25 between the query's words and each caption's words. Model-free and deterministic; the
  demo and the tests use it, where the tiny random LLM cannot give meaningful scores.

The `embedding` and `lexical` similarities s_i are put on the 1-5 scale relative to the video's best scene:
`score_i = 1 + 4 * s_i / max_j s_j` (all 1 when nothing matches). The queries are about the video, so the
best-matching scene is the evidence; its neighbours in similarity get P2.

**Similarity refinement** (optional, `relevance.similarity_model`, after the paper's SigLIP refinement): the
image-text similarity sim_i of scene i is the highest cosine between the query text and the scene's frames
(CLIP/SigLIP through transformers). It is min-max normalised over the video's scenes, sim_rel_i in [0, 1],
and fused as

    score_i = clip(llm_i + w * (2 * sim_rel_i - 1), 1, 5)        (w = relevance.similarity_weight, 0.5)

so a visually matching scene gains up to w and a non-matching one loses up to w. With the default thresholds
(P1 >= 4.9, P2 >= 4.3) and w = 0.5: an LLM 5 stays P1 unless its frames are in the lower 40% of the video's
similarity range (then P2); an LLM 4 becomes P2 only if its frames are in the top 20%; an LLM 3 never
reaches P2. Where all scenes have the same similarity, sim_rel = 0.5 and the LLM score is kept.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_builder.captions import scene_frame_indices
from data_builder.image_text import ImageTextScorer
from data_builder.llm import GenerationBackend, LLMRequest
from data_builder.parsing import extract_json
from pipeline.core.contracts import Chapter, Query, Scene, SceneScore

SCORE_PROMPT = (
    "You rate how relevant one scene of a video is to a query.\n"
    "Video summary: {summary}\n"
    "Chapter ({ch_start:.1f}s-{ch_end:.1f}s): {chapter}\n"
    "Scene ({start:.1f}s-{end:.1f}s): {caption}\n"
    "Query: {query}{options}{answer}\n"
    "Score the scene from 1 (unrelated) to 5 (it shows the key evidence to answer the query). "
    'Answer with JSON only: {{"score": 1-5, "reason": "one short sentence"}}'
)


@dataclass
class VideoContext:
    """What scorers read about one video: its scenes and their caption hierarchy (and frames, on demand)."""

    video_path: str
    scenes: list[Scene]
    captions: dict[int, str]
    chapters: list[Chapter] = field(default_factory=list)
    summary: str = ""
    frame_cache: Any = None
    max_pixels: int | None = None

    def chapter_of(self, scene: Scene) -> tuple[Chapter | None, float, float]:
        by_id = {s.index: s for s in self.scenes}
        for ch in self.chapters:
            if ch.scene_start <= scene.index <= ch.scene_end:
                return ch, by_id[ch.scene_start].start_s, by_id[ch.scene_end].end_s
        return None, scene.start_s, scene.end_s


@dataclass
class ScoringResult:
    """One query's scores (one per scene that got one) and the scenes that could not be scored, with why."""

    scores: list[SceneScore]
    failures: list[str] = field(default_factory=list)


class SceneScorer(Protocol):
    def score(self, ctx: VideoContext, queries: Sequence[Query]) -> list[ScoringResult]: ...


def query_text(q: Query, *, with_answer: bool = True) -> str:
    """The query, plus the correct option's text when known (what the evidence must show)."""
    if with_answer and q.options and q.answer is not None:
        return f"{q.text} {q.options[q.answer]}"
    return q.text


# ----------------------------------------------------------------------------------------------------
# LLM scorer
# ----------------------------------------------------------------------------------------------------


class ScoreAnswer(BaseModel):
    """The LLM's answer for one scene."""

    model_config = ConfigDict(extra="ignore")
    score: float = Field(ge=1, le=5)
    reason: str = Field(default="", max_length=1000)


def parse_score(text: str) -> ScoreAnswer:
    """Parse `{"score": n, "reason": "..."}` from the answer; ValueError with the reason otherwise."""
    value = extract_json(text, dict)
    if value is None:
        raise ValueError("no JSON object found")
    try:
        return ScoreAnswer.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"{'.'.join(str(x) for x in err['loc']) or 'answer'}: {err['msg']}") from None


class LLMScorer:
    def __init__(self, llm: GenerationBackend, *, max_reasks: int = 2) -> None:
        self.llm = llm
        self.max_reasks = max_reasks

    def prompt(self, ctx: VideoContext, scene: Scene, q: Query) -> str:
        ch, ch_start, ch_end = ctx.chapter_of(scene)
        options = ""
        if q.options:
            options = "\nOptions: " + " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(q.options))
        answer = f"\nCorrect answer: {q.options[q.answer]}" if q.options and q.answer is not None else ""
        return SCORE_PROMPT.format(
            summary=ctx.summary or "(none)",
            ch_start=ch_start,
            ch_end=ch_end,
            chapter=ch.text if ch else "(none)",
            start=scene.start_s,
            end=scene.end_s,
            caption=ctx.captions.get(scene.index, "") or "(no caption)",
            query=q.text,
            options=options,
            answer=answer,
        )

    def score(self, ctx: VideoContext, queries: Sequence[Query]) -> list[ScoringResult]:
        """All (query, scene) pairs of the video go to the LLM as one batch; failures are re-asked as a batch."""
        pairs = [(qi, s) for qi in range(len(queries)) for s in ctx.scenes]
        base = {(qi, s.index): self.prompt(ctx, s, queries[qi]) for qi, s in pairs}
        prompts = dict(base)
        parsed: dict[tuple[int, int], ScoreAnswer] = {}
        errors: dict[tuple[int, int], str] = {}
        pending = list(base)
        for _ in range(self.max_reasks + 1):
            if not pending:
                break
            answers = self.llm.generate([LLMRequest(prompt=prompts[k]) for k in pending])
            still = []
            for k, ans in zip(pending, answers, strict=True):
                try:
                    parsed[k] = parse_score(ans)
                    errors.pop(k, None)
                except ValueError as exc:
                    errors[k] = str(exc)
                    prompts[k] = (
                        base[k] + f"\nYour previous answer {ans[:200]!r} was invalid ({exc}). "
                        'Answer with the JSON object only, e.g. {"score": 3, "reason": "..."}.'
                    )
                    still.append(k)
            pending = still
        results = []
        for qi in range(len(queries)):
            scores, failures = [], []
            for s in ctx.scenes:
                k = (qi, s.index)
                if k in parsed:
                    a = parsed[k]
                    scores.append(SceneScore(scene_index=s.index, llm_score=a.score, score=a.score, reason=a.reason))
                else:
                    failures.append(f"scene {s.index}: {errors.get(k, 'no answer')} (after {self.max_reasks + 1} tries)")
            results.append(ScoringResult(scores, failures))
        return results


# ----------------------------------------------------------------------------------------------------
# Text-similarity scorers (embedding, lexical)
# ----------------------------------------------------------------------------------------------------


def relative_scores(sims: Sequence[float]) -> list[float]:
    """1 + 4 * s / max(s) (negative similarities count as 0); all 1 when nothing matches."""
    clipped = [max(0.0, float(s)) for s in sims]
    top = max(clipped, default=0.0)
    if top <= 0:
        return [1.0] * len(clipped)
    return [1.0 + 4.0 * s / top for s in clipped]


_STOPWORDS = frozenset(
    "a an the is are was were be been being of in on at to for from by with and or but not no this that these "
    "those it its what which who whom whose when where why how does do did shown shows show video scene there "
    "here than then into out up down over under about as can could would should will may might".split()
)


def tokenize(text: str) -> list[str]:
    """Lowercase words without stopwords, with a light plural fold (circles -> circle)."""
    words = re.findall(r"[a-z0-9]+", text.lower().replace("colour", "color"))
    out = []
    for w in words:
        if w in _STOPWORDS:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


def bm25(query: str, documents: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> list[tuple[float, list[str]]]:
    """BM25 of each document for the query, with the query words each document matched.

    idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5)) is always positive, so a word present in every caption
    still counts a little, and a word found in one caption only (the distinctive one) counts most.
    """
    docs = [tokenize(d) for d in documents]
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n if n else 0.0
    df = Counter(t for d in docs for t in set(d))
    terms = list(dict.fromkeys(tokenize(query)))
    out = []
    for d in docs:
        tf = Counter(d)
        score, matched = 0.0, []
        for t in terms:
            if tf[t] == 0:
                continue
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            norm = 1 - b + b * (len(d) / avgdl if avgdl else 1.0)
            score += idf * tf[t] * (k1 + 1) / (tf[t] + k1 * norm)
            matched.append(t)
        out.append((score, matched))
    return out


class LexicalScorer:
    """BM25 between the query (and its correct option) and each scene caption; no model."""

    def score(self, ctx: VideoContext, queries: Sequence[Query]) -> list[ScoringResult]:
        docs = [ctx.captions.get(s.index, "") for s in ctx.scenes]
        results = []
        for q in queries:
            ranked = bm25(query_text(q), docs)
            finals = relative_scores([r for r, _ in ranked])
            scores = [
                SceneScore(
                    scene_index=s.index,
                    llm_score=round(f, 4),
                    score=round(f, 4),
                    # the reason becomes part of SFT targets: only words the selector can read, no raw BM25 value
                    reason=(f"caption mentions {', '.join(m)}" if m else "no query word in the caption"),
                )
                for s, f, (_, m) in zip(ctx.scenes, finals, ranked, strict=True)
            ]
            results.append(ScoringResult(scores))
        return results


class EmbeddingScorer:
    """Cosine similarity between query and caption embeddings (sentence-transformers)."""

    def __init__(self, model: str, *, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        self.model = SentenceTransformer(model, device=device)
        self._lock = threading.Lock()

    def score(self, ctx: VideoContext, queries: Sequence[Query]) -> list[ScoringResult]:
        docs = [ctx.captions.get(s.index, "") or "(no caption)" for s in ctx.scenes]
        with self._lock:  # one model, videos annotated at once
            doc_emb = self.model.encode(docs, normalize_embeddings=True, convert_to_numpy=True)
            q_emb = self.model.encode([query_text(q) for q in queries], normalize_embeddings=True, convert_to_numpy=True)
        results = []
        for qi in range(len(queries)):
            sims = (doc_emb @ q_emb[qi]).tolist()
            finals = relative_scores(sims)
            results.append(
                ScoringResult(
                    [
                        SceneScore(
                            scene_index=s.index,
                            llm_score=round(f, 4),
                            score=round(f, 4),
                            reason=f"caption similarity {sim:.3f}",
                        )
                        for s, f, sim in zip(ctx.scenes, finals, sims, strict=True)
                    ]
                )
            )
        return results


# ----------------------------------------------------------------------------------------------------
# Image-text similarity refinement
# ----------------------------------------------------------------------------------------------------


def fuse(llm_score: float, sim_rel: float, weight: float) -> float:
    """The documented fusion: clip(llm + w * (2 * sim_rel - 1), 1, 5)."""
    return min(5.0, max(1.0, llm_score + weight * (2.0 * sim_rel - 1.0)))


class SimilarityRefiner:
    """Fuses CLIP/SigLIP frame-query similarity into the scores (formula in the module docstring)."""

    def __init__(self, model: str, *, weight: float = 0.5, frames_per_scene: int = 4, device: str = "cpu") -> None:
        self.scorer = ImageTextScorer(model, device=device)
        self.weight = weight
        self.frames_per_scene = frames_per_scene
        self._scene_emb: dict[str, Any] = {}
        self._lock = threading.Lock()  # videos annotated at once share the model and this cache

    def _scene_embeddings(self, ctx: VideoContext) -> list[Any]:
        """Normalised embeddings of each scene's frames, computed once per video (the last 16 videos kept)."""
        with self._lock:
            if ctx.video_path not in self._scene_emb:
                self._scene_emb[ctx.video_path] = [
                    self.scorer.image_embeddings(
                        ctx.frame_cache.images(
                            ctx.video_path, scene_frame_indices(s, self.frames_per_scene), max_pixels=ctx.max_pixels
                        )
                    )
                    for s in ctx.scenes
                ]
                while len(self._scene_emb) > 16:
                    self._scene_emb.pop(next(iter(self._scene_emb)))
            return self._scene_emb[ctx.video_path]

    def scene_similarities(self, ctx: VideoContext, q: Query) -> dict[int, float]:
        """sim_i: the highest cosine between the query text and scene i's frames."""
        with self._lock:
            text = self.scorer.text_embedding(query_text(q))
        return {
            s.index: float((emb @ text).max()) for s, emb in zip(ctx.scenes, self._scene_embeddings(ctx), strict=True)
        }

    def refine(self, ctx: VideoContext, q: Query, result: ScoringResult) -> ScoringResult:
        if not result.scores:
            return result
        sims = self.scene_similarities(ctx, q)
        vals = [sims[sc.scene_index] for sc in result.scores]
        lo, hi = min(vals), max(vals)
        out = []
        for sc in result.scores:
            sim = sims[sc.scene_index]
            rel = (sim - lo) / (hi - lo) if hi - lo > 1e-9 else 0.5
            out.append(
                sc.model_copy(
                    update={"sim": max(-1.0, min(1.0, round(sim, 6))), "score": round(fuse(sc.llm_score, rel, self.weight), 4)}
                )
            )
        return ScoringResult(out, result.failures)


def make_scorer(cfg: Any, llm: GenerationBackend | None) -> SceneScorer:
    """The scorer named by a RelevanceSection (`llm` needs the backend)."""
    if cfg.scorer == "llm":
        if llm is None:
            raise ValueError("the llm scorer needs an LLM backend")
        return LLMScorer(llm, max_reasks=cfg.max_reasks)
    if cfg.scorer == "embedding":
        return EmbeddingScorer(cfg.embedding_model)
    return LexicalScorer()
