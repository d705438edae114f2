"""Judges: lexicon judges rank clear cases right, rm:DIR equals the reward model, bad names fail clearly."""

from __future__ import annotations

import pytest
import torch

from preftune.data.batching import collate_sequences
from preftune.data.schema import DataError, Message
from preftune.data.tokenize import PairTokenizer
from preftune.judges.registry import JudgeError, get_judge, score_batch
from preftune.models.load import ModelLoadError
from preftune.models.reward_model import from_causal_lm, reward_of_sequences, save_scalar_model

POSITIVE = ["I loved this movie; the acting was wonderful and the story was great.",
            "A warm, funny and beautiful film. Highly recommended!"]  # fmt: skip
NEGATIVE = ["I hated this movie; the acting was terrible and the story was awful.",
            "A boring, ugly and painful film. Avoid it."]  # fmt: skip
SIMPLE = "Plants eat sunlight. They use it to make food. Then they give us air."
JARGON = ("Photosynthetic organisms utilize chlorophyll-mediated photochemical transduction, "
          "converting electromagnetic radiation into biochemically exploitable adenosine triphosphate.")  # fmt: skip


@pytest.mark.parametrize("spec", ["sentiment", "judge:sentiment"])
def test_sentiment_ranks_positive_above_negative(spec):
    judge = get_judge(spec)
    assert judge.name == "sentiment"
    for good, bad in zip(POSITIVE, NEGATIVE, strict=True):
        assert judge("Review it.", good) > 0.5 > -0.5 > judge("Review it.", bad)
    assert -1.0 <= judge("", "") <= 1.0 and judge("", "") == 0.0  # VADER's neutral


@pytest.mark.parametrize("spec", ["readability", "judge:readability"])
def test_readability_ranks_simple_above_jargon(spec):
    judge = get_judge(spec)
    assert judge.name == "readability"
    assert judge("Explain photosynthesis.", SIMPLE) > 80 > 20 > judge("Explain photosynthesis.", JARGON)


def test_lexicon_judges_ignore_the_prompt_and_loop_in_score_batch():
    judge = get_judge("judge:sentiment")
    prompts = ["a", [Message("user", "something else entirely")]]
    assert score_batch(judge, prompts, POSITIVE) == [judge("", text) for text in POSITIVE]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    model, tokenizer = from_causal_lm("tiny", seed=11)
    return save_scalar_model(model, tokenizer, tmp_path_factory.mktemp("rm") / "rm")


def test_rm_judge_equals_reward_of_sequences(reward_model_dir):
    from preftune.models.reward_model import load_scalar_model

    judge = get_judge(f"rm:{reward_model_dir}", batch_size=2)
    assert judge.name == f"rm:{reward_model_dir}"
    prompts = ["Review the movie.", "Why is the sky blue?",
               [Message("system", "Be brief."), Message("user", "What is the capital of France?")]]  # fmt: skip
    responses = [
        "The movie was wonderful.",
        "Sunlight bounces off tiny bits of air, and blue light the most.",
        "Paris.",
    ]
    batched = score_batch(judge, prompts, responses)

    # The same texts through the tokenizer path by hand, then the model directly.
    model, tokenizer = load_scalar_model(reward_model_dir)
    pair_tokenizer = PairTokenizer(tokenizer)
    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        messages = [Message("user", prompt)] if isinstance(prompt, str) else prompt
        prompt_ids, kept, _ = pair_tokenizer.encode_prompt(messages)
        ids, _ = pair_tokenizer.encode_response(
            kept, pair_tokenizer.render_prompt(kept), Message("assistant", response), 10**6
        )
        rows.append((prompt_ids, ids))
    with torch.no_grad():
        direct = reward_of_sequences(model.eval(), collate_sequences(rows, tokenizer.pad_token_id)).tolist()
    assert batched == pytest.approx(direct, abs=1e-5)
    # One at a time (no padding) agrees with the batch.
    assert [judge(p, r) for p, r in zip(prompts, responses, strict=True)] == pytest.approx(batched, abs=1e-5)
    assert len(set(round(s, 4) for s in batched)) == 3  # real, distinct scores


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "judge:kindness",
            r"^judge:kindness: unknown judge; choose one of judge:sentiment, judge:readability, judge:kid, "
            r"judge:exact_match, judge:format, rm:DIR, python:MODULE:FUNCTION$",
        ),
        ("bleu", r"^bleu: unknown judge; choose one of"),
        ("rm:", r"^rm:: rm: needs a folder"),
    ],
)
def test_unknown_judge_is_one_clear_line(spec, message):
    with pytest.raises(JudgeError, match=message) as caught:
        get_judge(spec)
    assert isinstance(caught.value, DataError)  # the CLI reports DataErrors as one line


def test_rm_judge_on_a_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        get_judge(f"rm:{tmp_path / 'nothing'}")


def test_score_batch_checks_lengths():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        score_batch(get_judge("sentiment"), ["a", "b"], ["c"])


def test_kid_judge_prefers_simple_on_topic_answers():
    from preftune.judges.registry import get_judge, score_batch

    judge = get_judge("judge:kid")
    prompt = "Explain photosynthesis to a 5-year-old."
    simple = "Plants are like little chefs! They use sunlight, water and air to make their own food."
    jargon = ("Photosynthesis is the process by which chloroplasts convert light energy into chemical energy "
              "via the light-dependent reactions and the Calvin cycle, producing glucose and oxygen.")
    off_topic = "I like trains. Trains are fast."
    simple_score, jargon_score, off_score = score_batch(judge, [prompt] * 3, [simple, jargon, off_topic])
    assert simple_score > 0.5 > jargon_score
    assert off_score == 0.0  # easy to read, but not an answer: relevance is a guard
    assert judge(prompt, simple) == simple_score
