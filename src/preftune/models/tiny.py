"""Tiny models and tokenizers built in-process, for tests and smoke runs (the alias `tiny`).

The tokenizer is a byte-level BPE trained in well under a second on a fixed built-in text, so any
string round-trips. It has a ChatML chat template like SmolLM2's, but with a *distinct* BOS token
and, by default, a distinct pad token: tests can then tell "BOS doubled" and "pad masked the EOS"
apart, which SmolLM2's conventions (BOS == turn marker, pad == EOS) hide. `pad_is_eos=True`
reproduces SmolLM2's convention on purpose.

The model is a random Llama (the SmolLM2 architecture, scaled down), seeded, with tied embeddings.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD, TURN = "<s>", "<|im_end|>", "<pad>", "<|im_start|>"

# Renders the whole conversation: BOS once, then one ChatML block per message. The generation
# prompt opens an assistant turn that the response (ending in <|im_end|>) closes.
CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Training text for the BPE merges: plain English of the kind the tests and demo use. Written for
# this project; any text would do, this one only makes common words single tokens.
_CORPUS = """
Explain photosynthesis to a five year old. Plants eat sunlight! They use light, water and air to
make their own food, and they give us the oxygen we breathe. A simple, friendly answer is better
than one full of jargon. What is the capital of France? The capital of France is Paris.
The movie was wonderful, funny and warm; the acting was great and the story was good.
The film was boring, too long and badly written; I did not like it at all.
Why is the sky blue? Sunlight bounces off tiny bits of air, and blue light bounces the most.
How do magnets work? Magnets pull on some metals, like iron, with an invisible force.
Thank you! You are welcome. Hello, how are you today? I am fine, thanks for asking.
""".strip()


def tiny_tokenizer(
    vocab_size: int = 320, chat_template: bool = True, pad_is_eos: bool = False
) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer with ChatML specials; deterministic for given arguments."""
    specials = [PAD, BOS, EOS, TURN]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS if pad_is_eos else PAD,
        additional_special_tokens=[TURN],
    )
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_config(vocab_size: int, tokenizer: PreTrainedTokenizerFast | None = None, **overrides) -> LlamaConfig:
    """SmolLM2's architecture (Llama, GQA, tied embeddings), shrunk to train in milliseconds."""
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    if tokenizer is not None:
        settings.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    settings.update(overrides)
    return LlamaConfig(**settings)


def tiny_model(
    tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0, **config_overrides
) -> LlamaForCausalLM:
    """A random tiny Llama sized to `tokenizer`; the same seed gives the same weights."""
    tokenizer = tokenizer or tiny_tokenizer()
    config = tiny_config(len(tokenizer), tokenizer, **config_overrides)
    # Seed only this construction, and restore the caller's RNG state afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.float()
