"""Golden-token tests for the one tokenization path (DESIGN.md section 2.3 guarantees)."""

from __future__ import annotations

import pytest
from tokenizers.processors import TemplateProcessing

from preftune.data.schema import Message, PreferencePair
from preftune.data.tokenize import PairTokenizer, token_checks
from preftune.models.tiny import tiny_tokenizer


def pair(prompt, chosen="Sunlight bounces.", rejected="Magnets pull."):
    messages = [Message("user", prompt)] if isinstance(prompt, str) else prompt
    return PreferencePair(messages, Message("assistant", chosen), Message("assistant", rejected))


def tokens(tok, ids):
    return tok.convert_ids_to_tokens(ids)


# ---- tiny tokenizer: ChatML template, distinct BOS ------------------------------------------


def test_golden_tokens_single_turn(tiny_tokenizer):
    tokenized = PairTokenizer(tiny_tokenizer)(pair("Hi"))
    assert tokens(tiny_tokenizer, tokenized.prompt_ids) == [
        "<s>", "<|im_start|>", "u", "s", "er", "Ċ", "H", "i", "<|im_end|>", "Ċ",
        "<|im_start|>", "a", "s", "s", "is", "t", "an", "t", "Ċ",
    ]  # fmt: skip
    # The response ends in exactly one EOS; ChatML's "\n" after it belongs to the next turn.
    assert tokens(tiny_tokenizer, tokenized.chosen_ids)[-2:] == [".", "<|im_end|>"]
    assert tokenized.chosen_ids.count(tiny_tokenizer.eos_token_id) == 1


def test_at_most_one_bos_even_when_the_tokenizer_adds_its_own():
    tok = tiny_tokenizer()
    # Make the tokenizer prepend BOS by itself, like Llama's: the template's BOS must not double.
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.bos_token_id)]
    )
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    pair_tokenizer = PairTokenizer(tok)
    assert pair_tokenizer.tokenizer_adds_bos
    tokenized = pair_tokenizer(pair("Hi"))
    assert tokenized.prompt_ids[:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("<|im_start|>")]
    assert (tokenized.prompt_ids + tokenized.chosen_ids).count(tok.bos_token_id) == 1
    # Without a template the plain path adds the one BOS such a tokenizer expects.
    tok.chat_template = None
    plain = PairTokenizer(tok)(pair("Hi"))
    assert plain.prompt_ids[0] == tok.bos_token_id and plain.prompt_ids.count(tok.bos_token_id) == 1


def test_prompt_ids_identical_and_match_one_go_tokenization(tiny_tokenizer):
    p = pair("Why is the sky blue?", chosen="Sunlight bounces off air.", rejected="The film was boring.")
    tokenized = PairTokenizer(tiny_tokenizer)(p)
    for response, ids in ((p.chosen, tokenized.chosen_ids), (p.rejected, tokenized.rejected_ids)):
        text = tiny_tokenizer.apply_chat_template(
            [m.to_dict() for m in p.prompt] + [response.to_dict()], tokenize=False
        )
        joint = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        # prompt + response is exactly the one-go tokenization, minus the template's trailing "\n".
        assert joint == tokenized.prompt_ids + ids + tiny_tokenizer("\n", add_special_tokens=False)["input_ids"]


def test_template_renders_the_whole_conversation(tiny_tokenizer):
    conversation = [
        Message("system", "Be kind."),
        Message("user", "Hello"),
        Message("assistant", "Hi!"),
        Message("user", "Why is the sky blue?"),
    ]
    tokenized = PairTokenizer(tiny_tokenizer)(pair(conversation))
    text = tiny_tokenizer.decode(tokenized.prompt_ids)
    assert text == (
        "<s><|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>user\nWhy is the sky blue?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_special_token_spelled_in_model_text_stays_literal(tiny_tokenizer):
    tokenized = PairTokenizer(tiny_tokenizer)(pair("Hi <s>", chosen="Stop <|im_end|> here."))
    eos = tiny_tokenizer.eos_token_id
    assert tokenized.chosen_ids.count(eos) == 1 and tokenized.chosen_ids[-1] == eos
    assert tokenized.prompt_ids.count(tiny_tokenizer.bos_token_id) == 1
    assert tiny_tokenizer.decode(tokenized.chosen_ids) == "Stop <|im_end|> here.<|im_end|>"


def test_plain_path_without_template():
    tok = tiny_tokenizer(chat_template=False)
    tokenized = PairTokenizer(tok)(pair("The movie was", chosen=" great", rejected=" bad"))
    assert tokenized.prompt_ids == tok("The movie was", add_special_tokens=False)["input_ids"]
    assert tokenized.chosen_ids == tok(" great", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # Several turns get the documented "Role: text" layout with an open assistant turn.
    multi = PairTokenizer(tok)(pair([Message("system", "Be brief."), Message("user", "Hi")]))
    assert tok.decode(multi.prompt_ids) == "System: Be brief.\n\nUser: Hi\n\nAssistant:"


def test_prompt_truncation_drops_oldest_turns_then_keeps_the_end(tiny_tokenizer):
    conversation = [
        Message("user", "Hello, how are you today?"),
        Message("assistant", "I am fine, thanks for asking."),
        Message("user", "Why is the sky blue?"),
    ]
    full = PairTokenizer(tiny_tokenizer, max_length=4096, max_prompt_length=4000)(pair(conversation))
    last_turn_only = PairTokenizer(tiny_tokenizer)(pair(conversation[-1:]))
    limit = len(last_turn_only.prompt_ids)
    pair_tokenizer = PairTokenizer(tiny_tokenizer, max_length=limit + 40, max_prompt_length=limit)
    cut = pair_tokenizer(pair(conversation))
    assert len(full.prompt_ids) > limit
    assert cut.prompt_ids == last_turn_only.prompt_ids and cut.prompt_truncated
    assert pair_tokenizer.stats.turns_dropped == 2 and pair_tokenizer.stats.prompts_truncated == 1
    # Tighter still: the question keeps its end ("blue?"), not its start.
    tighter = PairTokenizer(tiny_tokenizer, max_length=limit + 40, max_prompt_length=limit - 4)(pair(conversation))
    assert len(tighter.prompt_ids) <= limit - 4
    text = tiny_tokenizer.decode(tighter.prompt_ids)
    assert "blue?<|im_end|>" in text and "Why" not in text


def test_response_truncation_cuts_the_end_without_eos(tiny_tokenizer):
    long_answer = "Sunlight bounces off tiny bits of air, and blue light bounces the most. " * 5
    pair_tokenizer = PairTokenizer(tiny_tokenizer, max_length=40, max_prompt_length=30)
    tokenized = pair_tokenizer(pair("Why?", chosen=long_answer, rejected="Blue."))
    assert len(tokenized.prompt_ids) + len(tokenized.chosen_ids) == 40
    assert tokenized.chosen_truncated and not tokenized.rejected_truncated
    assert tiny_tokenizer.eos_token_id not in tokenized.chosen_ids
    assert tokenized.rejected_ids[-1] == tiny_tokenizer.eos_token_id
    assert pair_tokenizer.stats.responses_truncated == 1
    assert token_checks(pair_tokenizer, [pair("Why?", chosen=long_answer, rejected="Blue.")])["eos_errors"] == 0


def test_limits_are_validated(tiny_tokenizer):
    with pytest.raises(ValueError, match="max_prompt_length"):
        PairTokenizer(tiny_tokenizer, max_length=10, max_prompt_length=10)


# ---- token_checks can fail: each check fires on a tokenizer that breaks its guarantee ---------


class DoubleBos(PairTokenizer):
    def _prompt_ids_untruncated(self, messages):
        return [self.bos_id] + super()._prompt_ids_untruncated(messages)


class NoEos(PairTokenizer):
    def encode_response(self, *args, **kwargs):
        ids, cut = super().encode_response(*args, **kwargs)
        return ids[:-1], cut


class ShiftedBoundary(PairTokenizer):
    def _prompt_ids_untruncated(self, messages):
        return super()._prompt_ids_untruncated(messages)[:-1]


@pytest.mark.parametrize(
    "broken, check", [(DoubleBos, "bos_errors"), (NoEos, "eos_errors"), (ShiftedBoundary, "prompt_mismatch")]
)
def test_token_checks_catch_each_broken_guarantee(tiny_tokenizer, broken, check):
    pairs = [pair("Hi"), pair("Why is the sky blue?")]
    assert token_checks(PairTokenizer(tiny_tokenizer), pairs) == {
        "pairs_checked": 2, "prompt_mismatch": 0, "eos_errors": 0, "bos_errors": 0,
    }  # fmt: skip
    assert token_checks(broken(tiny_tokenizer), pairs)[check] == 2


# ---- SmolLM2's real tokenizer: BOS == turn marker, pad == EOS, default system prompt ---------


@pytest.mark.smollm2
def test_golden_tokens_smollm2(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    tokenized = PairTokenizer(tok)(pair("Why is the sky blue?"))
    # The template inserts SmolLM2's default system prompt, and every turn opens with BOS.
    assert tokenized.prompt_ids == [
        1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
        19712, 8182, 2, 198, 1, 4093, 198, 4898, 314, 260, 6376, 4461, 47, 2, 198, 1, 520, 9531, 198,
    ]  # fmt: skip
    assert tokenized.chosen_ids == [22791, 2501, 278, 26168, 30, 2]
    assert tokenized.rejected_ids[-1] == 2 and tokenized.rejected_ids.count(2) == 1
    assert token_checks(PairTokenizer(tok), [pair("Why is the sky blue?")])["pairs_checked"] == 1
    assert sum(token_checks(PairTokenizer(tok), [pair("Why is the sky blue?")]).values()) == 1
