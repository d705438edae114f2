"""Coherence: the part of the kid judge that penalises simple nonsense.

    coherence(prompt, response) = fluency x (1 - repetition) x (1 - tautology), each in [0, 1]

Easy-to-read, on-topic text can still be nonsense: "Wind is a talking car." (a category error),
"A volcano is a big volcano that lives here in the volcanoes." (a tautology), "little one, little
one, little one" (a loop), "Snow is cold, so it is hot." (a contradiction). Reading ease and
embedding relevance score all of these high (issue 17 quotes such answers scored 1.00). Three
checks, each a guard that leaves ordinary answers at 1:

- fluency: SLOR, the syntactic log-odds ratio (Lau, Clark and Lappin 2017; Kann, Rothe and
  Filippova 2018, "Sentence-level fluency evaluation"): the response's log-probability given the
  prompt under a small frozen language model (SmolLM2-135M-Instruct, the converted copy
  `models/load.py` caches) minus its log-probability under a unigram model of English words
  (`wordfreq`), per word. Subtracting the unigram term stops rare but fitting words ("gills")
  from reading as nonsense, which a plain mean log-prob does (measured on the test set in
  `tests/judges/data/`: 0.65 of cross pairs ranked right by mean log-prob alone, 0.70 by SLOR).
  It is mapped linearly from [FLUENCY_FLOOR, FLUENCY_FULL] nats per word to [0, 1] and clipped.
  A language model finds "a talking car" after "Wind is" and many contradictions improbable; it
  does not find a loop improbable (copying is cheap for it), which is why the next check exists.
- repetition: the share of word 3-grams that repeat an earlier one, mapped from
  [REPEAT_FREE, REPEAT_FULL] to [0, 1]. A natural answer of a few sentences repeats almost none.
- tautology: the share of sentences that define a thing by itself, "X is/are ... X ..." (the
  subject's word, singular or plural, back in its own predicate).

What it cannot do: it knows nothing about facts beyond what a 135M model has absorbed ("The sun
is a planet." reads as fluent), and a fluent but wrong explanation passes. Contradictions are
caught only where the language model finds them improbable: of the five in the test set, two
("Thunder is quiet and makes no sound. It is the loudest sound in the sky.") pass untouched. The
tautology check reads only "X is/are ..." sentences, with crude plural folding. The language model is
the same base model the demo trains, so fluency also leans toward that model's own style; that
is why fluency saturates at FLUENCY_FULL and only penalises, rather than ranks.

Cost: the language model loads once per process (about 5 s from the cached copy) and scores
answers in batches sorted by length, in fp32 so the gold scores do not depend on the CPU. Measured
here (2-core CPU, 1 thread, other jobs running): the 48 answers of the test set, about 80 tokens
each with the chat-templated prompt, in 16 s, so about 0.3 s per answer. Estimated from that, not
timed: the full demo's 240 labelled answers plus its held-out evaluation (about 400 answers) take
about 2 minutes more.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

FLUENCY_MODEL = "smollm2-135m"
# SLOR bounds, nats per word, read off the written test set (tests/judges/data/kid_coherence.jsonl):
# its coherent answers lie at 3.2-5.1, its category errors and word salad at -0.1-3.3. The cross-pair
# rate moved little with the bounds there (0.94-0.95 for floors 1.5-3.0 and fulls 3.5-4.0).
FLUENCY_FLOOR = 2.0  # at or below this an answer counts as nonsense
FLUENCY_FULL = 3.5  # at or above this an answer counts as fully fluent
FLUENCY_MAX_TOKENS = 192  # longer answers are scored on their first tokens (the judge's cost bound)
FLUENCY_BATCH = 16
UNKNOWN_WORD_FREQUENCY = 1e-8
REPEAT_FREE = 0.10  # share of repeated word 3-grams tolerated without penalty
REPEAT_FULL = 0.40  # share at which repetition alone zeroes the score

_WORD = re.compile(r"[a-z0-9']+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# A definitional clause: optional article, a one- or two-word subject, a copula, the predicate.
_DEFINITION = re.compile(r"^(?:(?:a|an|the)\s+)?(?:[a-z']+\s+)?([a-z']+)\s+(?:is|are|was|were)\s+(.+)$")


def _stem(word: str) -> str:
    """Crude plural folding for the tautology check: volcanoes/volcano, clouds/cloud, seeds/seed."""
    for suffix in ("oes", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def repetition(response: str) -> float:
    """Share of word 3-grams that repeat an earlier 3-gram of the same text (0 = none)."""
    words = _WORD.findall(response.lower())
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def tautology(response: str) -> float:
    """Share of sentences of the form "X is/are ... X ..." (the subject defined by itself)."""
    sentences = [s for s in _SENTENCE_END.split(response.strip()) if _WORD.search(s)]
    if not sentences:
        return 0.0
    circular = 0
    for sentence in sentences:
        match = _DEFINITION.match(" ".join(_WORD.findall(sentence.lower())))
        if match is None:
            continue
        subject = _stem(match.group(1))
        if any(_stem(word) == subject for word in match.group(2).split()):
            circular += 1
    return circular / len(sentences)


@lru_cache(maxsize=1)
def _fluency_model():
    import torch

    from ..data.tokenize import PairTokenizer
    from ..models.load import load_policy

    model, tokenizer = load_policy(FLUENCY_MODEL, dtype=torch.float32)
    model.requires_grad_(False).eval()
    return model, tokenizer, PairTokenizer(tokenizer)


def _prompt_messages(prompt) -> list:
    from ..data.schema import Message

    return [Message("user", prompt)] if isinstance(prompt, str) else list(prompt)


def logprobs(prompts: list, responses: list[str]) -> list[tuple[float, int]]:
    """Per answer, (sum of log-probs of its tokens given the prompt, token count) under the frozen
    language model; the closing end-of-turn token is not counted. Empty text: (0.0, 0)."""
    import torch

    from ..data.batching import collate_sequences
    from ..models.logprobs import token_logprobs

    model, tokenizer, pair_tokenizer = _fluency_model()
    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        prompt_ids, _, _ = pair_tokenizer.encode_prompt(_prompt_messages(prompt))
        # The answer's own tokens, as the one tokenization path writes them after the prompt; the
        # closing end-of-turn token is left out: a truncated answer is not nonsense.
        body = tokenizer(response.strip(), add_special_tokens=False, split_special_tokens=True)["input_ids"]
        rows.append((prompt_ids, body[:FLUENCY_MAX_TOKENS]))
    found = [(0.0, 0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    with torch.inference_mode():
        for start in range(0, len(order), FLUENCY_BATCH):
            chunk = [i for i in order[start : start + FLUENCY_BATCH] if rows[i][1]]
            if not chunk:
                continue
            batch = collate_sequences([rows[i] for i in chunk], tokenizer.pad_token_id)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            per_token = token_logprobs(logits, batch.input_ids)  # position t-1 predicts token t
            mask = batch.completion_mask[:, 1:].float()
            sums = (per_token * mask).sum(-1)
            counts = mask.sum(-1)
            for i, total, count in zip(chunk, sums.tolist(), counts.tolist(), strict=True):
                found[i] = (total, int(count))
    return found


def mean_logprobs(prompts: list, responses: list[str]) -> list[float]:
    """Per answer, the mean log-prob per token given the prompt (-inf for empty text)."""
    return [total / count if count else -math.inf for total, count in logprobs(prompts, responses)]


def unigram_logprob(response: str) -> tuple[float, int]:
    """(sum of log unigram frequencies of the words, word count), from `wordfreq`'s English list;
    a word it does not know counts as 1 in 10^8 (its own floor is about that)."""
    from wordfreq import tokenize, word_frequency

    words = tokenize(response, "en")
    return sum(math.log(max(word_frequency(word, "en"), UNKNOWN_WORD_FREQUENCY)) for word in words), len(words)


def slor(prompts: list, responses: list[str]) -> list[float]:
    """Per answer, (log p_LM(text | prompt) - log p_unigram(text)) / words; -inf without words."""
    scores = []
    for (lm_total, _), response in zip(logprobs(prompts, responses), responses, strict=True):
        unigram_total, words = unigram_logprob(response)
        scores.append((lm_total - unigram_total) / words if words else -math.inf)
    return scores


def _ramp(value: float, zero_at: float, one_at: float) -> float:
    """Linear map of `value` from [zero_at, one_at] to [0, 1], clipped (either direction)."""
    return min(max((value - zero_at) / (one_at - zero_at), 0.0), 1.0)


def coherence_parts(prompts: list, responses: list[str]) -> list[dict[str, float]]:
    """Per answer: fluency, repetition and tautology factors in [0, 1] (1 = no penalty), the raw
    SLOR, and their product `coherence`."""
    parts = []
    for response, fluency_slor in zip(responses, slor(prompts, responses), strict=True):
        fluency = _ramp(fluency_slor, FLUENCY_FLOOR, FLUENCY_FULL) if math.isfinite(fluency_slor) else 0.0
        not_repeated = _ramp(repetition(response), REPEAT_FULL, REPEAT_FREE)
        not_circular = 1.0 - tautology(response)
        parts.append({"slor": fluency_slor, "fluency": fluency, "repetition": not_repeated,
                      "tautology": not_circular, "coherence": fluency * not_repeated * not_circular})  # fmt: skip
    return parts


def coherence_scores(prompts: list, responses: list[str]) -> list[float]:
    """Batched coherence in [0, 1] (module docstring)."""
    return [part["coherence"] for part in coherence_parts(prompts, responses)]
