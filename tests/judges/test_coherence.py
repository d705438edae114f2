"""The kid judge's coherence part: it ranks sensible answers above simple nonsense on a written set.

`data/kid_coherence.jsonl` was written for this project: 24 answers to prompts from
`assets/kid_prompts.txt`, each once coherent and simple, once simple but nonsensical in the ways
issue 17 quotes from the demo (category errors, circular definitions, loops, contradictions,
word salad). The judge uses SmolLM2-135M-Instruct as its frozen language model (the converted
copy is cached after the first use).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from preftune.judges import coherence
from preftune.judges.kid import kid_scores, reading_ease, relevance

SET = Path(__file__).parent / "data" / "kid_coherence.jsonl"


def _cross_pair_rate(scores: list[float], coherent: list[bool]) -> float:
    """Share of (coherent, nonsense) pairs, across all prompts, where the coherent one scores higher
    (ties count half)."""
    good = [s for s, c in zip(scores, coherent, strict=True) if c]
    bad = [s for s, c in zip(scores, coherent, strict=True) if not c]
    return sum((g > b) + 0.5 * (g == b) for g in good for b in bad) / (len(good) * len(bad))


@pytest.fixture(scope="module")
def written_set():
    rows = [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 40 and sum(r["coherent"] for r in rows) == len(rows) // 2
    return rows


def test_kid_judge_ranks_coherent_above_nonsense(written_set):
    torch.set_num_threads(1)
    prompts = [r["prompt"] for r in written_set]
    responses = [r["response"] for r in written_set]
    coherent = [r["coherent"] for r in written_set]
    scores = kid_scores(prompts, responses)
    rate = _cross_pair_rate(scores, coherent)
    # The same answers without the coherence part: the set is built so that readability and
    # relevance alone cannot tell them apart, so this test fails if coherence stops working.
    without = [reading_ease(r) * rel for r, rel in zip(responses, relevance(prompts, responses), strict=True)]
    rate_without = _cross_pair_rate(without, coherent)
    print(f"\nkid judge, coherent above nonsense in {rate:.1%} of {len(responses) ** 2 // 4} cross pairs "
          f"(without coherence: {rate_without:.1%})")  # fmt: skip
    assert rate >= 0.90
    assert rate_without < 0.75
    same_prompt = [scores[i] > scores[i + 1] for i in range(0, len(scores), 2) if coherent[i] and not coherent[i + 1]]
    assert len(same_prompt) == len(scores) // 2 and sum(same_prompt) >= 0.9 * len(same_prompt)


def test_repetition_is_the_share_of_repeated_word_trigrams():
    # a-b-c, b-c-a, c-a-b, a-b-c: one of four repeats an earlier one.
    assert coherence.repetition("A b c, a B c.") == pytest.approx(0.25)
    assert coherence.repetition("Plants use sunlight to make food.") == 0.0
    assert coherence.repetition("Two words") == 0.0
    assert coherence.repetition("little one, " * 6) > coherence.REPEAT_FULL


def test_tautology_counts_things_defined_by_themselves():
    assert coherence.tautology("A volcano is a big volcano that lives in the volcanoes. It is hot.") == 0.5
    assert coherence.tautology("Clouds are big clouds.") == 1.0
    # A longer word that starts like the subject is not the subject.
    assert coherence.tautology("Rain is water. Rainbows are made when rain meets light.") == 0.0
    assert coherence.tautology("When you drop a ball, it falls.") == 0.0
    assert coherence.tautology("") == 0.0


def test_mean_logprob_is_the_language_models_own_and_ignores_padding():
    from preftune.data.schema import Message

    torch.set_num_threads(1)
    prompts = ["Explain wind to a 5-year-old.", [Message("user", "Explain snow to a 5-year-old.")]]
    responses = ["Wind is air that moves.", "Snow is frozen water that falls from the clouds when it is cold."]
    batched = coherence.mean_logprobs(prompts, responses)
    alone = [coherence.mean_logprobs([p], [r])[0] for p, r in zip(prompts, responses, strict=True)]
    assert batched == pytest.approx(alone, abs=1e-4)  # right padding changes nothing

    # By hand: the chat-templated prompt, then the answer's tokens; mean of log p(token | before).
    model, tokenizer, pair_tokenizer = coherence._fluency_model()
    prompt_ids, _, _ = pair_tokenizer.encode_prompt([Message("user", prompts[0])])
    answer_ids = tokenizer(responses[0], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    logp = torch.log_softmax(logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert batched[0] == pytest.approx(float(logp[len(prompt_ids) - 1 :].mean()), abs=1e-4)
    assert coherence.mean_logprobs(prompts[:1], [""]) == [float("-inf")]


def test_slor_subtracts_the_unigram_log_probability_per_word():
    from wordfreq import word_frequency

    prompts, responses = ["Explain fish breathing underwater to a 5-year-old."], ["Fish have gills."]
    (lm_total, tokens), = coherence.logprobs(prompts, responses)
    assert tokens > 0 and lm_total < 0
    unigram = sum(math.log(word_frequency(word, "en")) for word in ("fish", "have", "gills"))
    assert coherence.slor(prompts, responses)[0] == pytest.approx((lm_total - unigram) / 3, abs=1e-6)
    assert coherence.slor(prompts, ["..."]) == [float("-inf")]  # no words


def test_empty_and_looping_answers_score_zero_coherence():
    parts = coherence.coherence_parts(["Explain the sun to a 5-year-old."] * 2, ["", "the sun, the sun, " * 8])
    assert parts[0]["coherence"] == 0.0 and parts[0]["fluency"] == 0.0
    assert parts[1]["repetition"] == 0.0 and parts[1]["coherence"] == 0.0
