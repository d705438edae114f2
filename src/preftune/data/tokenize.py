"""The ONLY path from messages to token ids: chat templates, BOS/EOS and truncation live here.

Guarantees (DESIGN.md section 2.3), each with a golden-token test:
- at most one BOS: the template's own BOS is kept and the tokenizer never adds a second one;
- exactly one EOS closes each complete response, and none appears inside it (response text that
  spells a special token, e.g. a literal "<|im_end|>", is tokenized as plain characters);
- the prompt's ids are identical in chosen and rejected: the prompt is tokenized once and the
  responses are tokenized after it, so a BPE merge can never move the boundary;
- the chat template renders the whole conversation (system prompt, earlier turns, the response),
  and a tokenizer without a template gets a documented plain-text layout instead.

Truncation keeps the end of the prompt (oldest turns go first, then the start of the oldest
remaining turn's text) and cuts responses at their end. A response cut short has no EOS, on
purpose: it did not end there, and training an EOS onto it would teach the model to stop early.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .schema import DataError, Message, PreferencePair, UnpairedExample


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]  # response tokens only; the full chosen sequence is prompt_ids + chosen_ids
    rejected_ids: list[int]
    chosen_truncated: bool = False
    rejected_truncated: bool = False
    prompt_truncated: bool = False
    margin: float | None = None
    id: str | None = None


@dataclass
class TokenizedExample:
    """One unpaired (KTO) example: the prompt, the answer after it, and its thumbs-up label."""

    prompt_ids: list[int]
    completion_ids: list[int]  # ends in one EOS unless cut by max_length
    label: bool
    completion_truncated: bool = False
    id: str | None = None


@dataclass
class TruncationStats:
    """What truncation did so far; reported by the CLI and trainers so nothing is cut silently."""

    pairs: int = 0
    prompts_truncated: int = 0
    turns_dropped: int = 0
    responses_truncated: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# Layout for tokenizers without a chat template: a lone user turn is the raw text (a base model
# continues it); anything richer becomes "Role: text" blocks ending in an open "Assistant:" turn.
def _plain_prompt_text(messages: list[Message]) -> str:
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    blocks = [f"{m.role.capitalize()}: {m.content}" for m in messages]
    return "\n\n".join(blocks) + "\n\nAssistant:"


@dataclass
class PairTokenizer:
    """Tokenizes prompts, responses and whole pairs for one tokenizer and one set of limits.

    `max_length` bounds prompt + response (each of chosen and rejected separately);
    `max_prompt_length` bounds the prompt alone.
    """

    tokenizer: object
    max_length: int = 1024
    max_prompt_length: int = 512
    stats: TruncationStats = field(default_factory=TruncationStats)

    def __post_init__(self):
        tok = self.tokenizer
        if tok.eos_token_id is None:
            raise ValueError("tokenizer has no EOS token; preftune needs one to close responses")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length})"
            )
        self.eos_id: int = tok.eos_token_id
        self.bos_id: int | None = tok.bos_token_id
        self.has_template = bool(getattr(tok, "chat_template", None))
        # Does this tokenizer put a BOS in front of plain text by itself (Llama-style)? Then the
        # plain path must add one too, and the template path must not add another.
        probe = tok("a", add_special_tokens=True)["input_ids"]
        self.tokenizer_adds_bos = self.bos_id is not None and len(probe) > 0 and probe[0] == self.bos_id

    # -- text rendering -------------------------------------------------------------------------
    def render_prompt(self, messages: list[Message]) -> str:
        """The prompt as text, ending where the assistant's answer starts."""
        if not self.has_template:
            return _plain_prompt_text(messages)
        return self.tokenizer.apply_chat_template(
            [m.to_dict() for m in messages], tokenize=False, add_generation_prompt=True
        )

    def _text_ids(self, text: str, literal: bool = False) -> list[int]:
        # add_special_tokens=False: BOS/EOS come only from the template or from this module.
        # literal=True keeps special-token spellings inside model text as plain characters.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=literal)["input_ids"]

    # -- prompts --------------------------------------------------------------------------------
    def _prompt_ids_untruncated(self, messages: list[Message]) -> list[int]:
        text = self.render_prompt(messages)
        if self.has_template:
            # The template may spell BOS; tokenize its special tokens, but not the user text's.
            ids = self._template_ids(messages, text)
        else:
            ids = self._text_ids(text, literal=True)
        needs_bos = self.tokenizer_adds_bos and (not ids or ids[0] != self.bos_id)
        return ([self.bos_id] if needs_bos else []) + ids

    def _template_ids(self, messages: list[Message], text: str) -> list[int]:
        """Tokenize rendered template text, keeping each message's content literal."""
        ids: list[int] = []
        cursor = 0
        for message in messages:
            start = text.find(message.content, cursor) if message.content else -1
            if start < 0:  # the template rewrote the content (e.g. trimmed it): no literal split
                continue
            ids += self._text_ids(text[cursor:start]) + self._text_ids(message.content, literal=True)
            cursor = start + len(message.content)
        return ids + self._text_ids(text[cursor:])

    def encode_prompt(self, messages: list[Message]) -> tuple[list[int], list[Message], bool]:
        """Prompt ids (ending in the open assistant turn), the messages kept, and whether it was cut."""
        if not messages:
            raise ValueError("empty prompt")
        ids = self._prompt_ids_untruncated(messages)
        if len(ids) <= self.max_prompt_length:
            return ids, list(messages), False
        system = [m for m in messages[:1] if m.role == "system"]
        turns = list(messages[len(system) :])
        # Drop the oldest turns first; the last turn (what is being answered) always stays.
        while len(turns) > 1 and len(ids) > self.max_prompt_length:
            turns = turns[1:]
            self.stats.turns_dropped += 1
            ids = self._prompt_ids_untruncated(system + turns)
        # Still too long: keep the end of the oldest remaining turn's text, cutting its start.
        while len(ids) > self.max_prompt_length:
            first = turns[0]
            content_ids = self._text_ids(first.content, literal=True)
            excess = len(ids) - self.max_prompt_length
            if excess >= len(content_ids):
                if system:  # a system prompt longer than the budget goes before the question does
                    system, ids = [], self._prompt_ids_untruncated(turns)
                    continue
                # A setting the user chose, so it is reported as one line like a bad file.
                raise DataError("--max-prompt-length", 0, f"{self.max_prompt_length} tokens is shorter than the chat template alone; raise it")
            # Decoding then re-encoding can merge differently at the new start; loop until it fits.
            turns = [Message(first.role, self.tokenizer.decode(content_ids[excess:]))] + turns[1:]
            ids = self._prompt_ids_untruncated(system + turns)
        return ids, system + turns, True

    # -- responses ------------------------------------------------------------------------------
    def encode_response(
        self, prompt: list[Message], prompt_text: str, response: Message, budget: int
    ) -> tuple[list[int], bool]:
        """Response ids ending in exactly one EOS, or cut to `budget` tokens without EOS."""
        if self.has_template:
            full = self.tokenizer.apply_chat_template(
                [m.to_dict() for m in prompt] + [response.to_dict()], tokenize=False
            )
            if not full.startswith(prompt_text):
                raise ValueError("chat template renders the prompt differently once a response follows")
            tail = full[len(prompt_text) :]
            start = tail.find(response.content) if response.content else -1
            if start >= 0:
                body = self._text_ids(tail[:start]) + self._text_ids(response.content, literal=True)
                ids = body + self._text_ids(tail[start + len(response.content) :])
            else:  # the template rewrote the content; tokenize the tail as the template wrote it
                body, ids = [], self._text_ids(tail)
            # Keep everything up to the first EOS after the content; drop what the template puts
            # after it (ChatML's "\n"), which belongs to the next turn, not this response.
            eos_at = [i for i in range(len(body), len(ids)) if ids[i] == self.eos_id]
            ids = ids[: eos_at[0] + 1] if eos_at else ids + [self.eos_id]
        else:
            ids = self._text_ids(response.content, literal=True) + [self.eos_id]
        if len(ids) > budget:
            return ids[:budget], True
        return ids, False

    def encode_example(self, prompt: list[Message], response: Message) -> tuple[list[int], list[int], bool]:
        """One supervised example: (prompt ids, response ids, response truncated)."""
        prompt_ids, kept_prompt, prompt_cut = self.encode_prompt(prompt)
        self.stats.prompts_truncated += int(prompt_cut)
        budget = self.max_length - len(prompt_ids)
        response_ids, cut = self.encode_response(kept_prompt, self.render_prompt(kept_prompt), response, budget)
        self.stats.responses_truncated += int(cut)
        return prompt_ids, response_ids, cut

    def tokenize_unpaired(self, example: UnpairedExample) -> TokenizedExample:
        """An unpaired example through the same path as a pair's chosen side."""
        prompt_ids, completion_ids, cut = self.encode_example(example.prompt, example.completion)
        return TokenizedExample(prompt_ids, completion_ids, example.label, completion_truncated=cut, id=example.id)

    # -- pairs ----------------------------------------------------------------------------------
    def __call__(self, pair: PreferencePair) -> TokenizedPair:
        prompt_ids, kept_prompt, prompt_cut = self.encode_prompt(pair.prompt)
        # Responses are rendered after the *kept* messages, so they continue the same text.
        prompt_text = self.render_prompt(kept_prompt)
        budget = self.max_length - len(prompt_ids)
        chosen_ids, chosen_cut = self.encode_response(kept_prompt, prompt_text, pair.chosen, budget)
        rejected_ids, rejected_cut = self.encode_response(kept_prompt, prompt_text, pair.rejected, budget)
        self.stats.pairs += 1
        self.stats.prompts_truncated += int(prompt_cut)
        self.stats.responses_truncated += int(chosen_cut) + int(rejected_cut)
        return TokenizedPair(
            prompt_ids=prompt_ids,
            chosen_ids=chosen_ids,
            rejected_ids=rejected_ids,
            chosen_truncated=chosen_cut,
            rejected_truncated=rejected_cut,
            prompt_truncated=prompt_cut,
            margin=pair.margin,
            id=pair.id,
        )


def token_checks(pair_tokenizer: PairTokenizer, pairs: list[PreferencePair]) -> dict[str, int]:
    """Count pairs that break a guarantee, checked against independent tokenizations.

    - prompt_mismatch: the whole conversation, rendered by the template and tokenized in one go,
      does not start with our prompt ids (a BPE merge moved the boundary), or our ids do not
      decode back to the rendered text;
    - eos_errors: a complete response does not end in exactly one EOS, or has one inside it
      (a response cut by max_length must have none);
    - bos_errors: the sequence starts with two BOS, or holds more BOS ids than the rendered text
      spells (the tokenizer added one on top of the template's).
    """
    tok = pair_tokenizer.tokenizer
    specials = [s for s in tok.all_special_tokens if s]
    counts = {"pairs_checked": 0, "prompt_mismatch": 0, "eos_errors": 0, "bos_errors": 0}
    for pair in pairs:
        tokenized = pair_tokenizer(pair)
        prompt = tokenized.prompt_ids
        rendered_prompt = pair_tokenizer.render_prompt(pair.prompt)
        counts["pairs_checked"] += 1
        mismatch = eos_bad = bos_bad = False
        for response, ids, cut in (
            (pair.chosen, tokenized.chosen_ids, tokenized.chosen_truncated),
            (pair.rejected, tokenized.rejected_ids, tokenized.rejected_truncated),
        ):
            if pair_tokenizer.has_template and not tokenized.prompt_truncated:
                text = tok.apply_chat_template(
                    [m.to_dict() for m in pair.prompt] + [response.to_dict()], tokenize=False
                )
                ours = tok.decode(prompt + ids)
                mismatch |= not text.startswith(ours.removesuffix(tok.decode(ids[-1:])) if cut else ours)
                # One-go tokenization parses special-token spellings in user text; ours keeps them
                # literal on purpose, so that comparison only applies to text without them.
                if not any(sp in m.content for m in [*pair.prompt, response] for sp in specials):
                    joint = tok(text, add_special_tokens=False)["input_ids"]
                    mismatch |= joint[: len(prompt)] != prompt
            eos_count = ids.count(pair_tokenizer.eos_id)
            eos_bad |= (eos_count != 0) if cut else (eos_count != 1 or ids[-1] != pair_tokenizer.eos_id)
            if pair_tokenizer.bos_id is not None:
                full = prompt + ids
                spelled = rendered_prompt.count(tok.bos_token)
                spelled += int(
                    pair_tokenizer.tokenizer_adds_bos and not rendered_prompt.startswith(tok.bos_token)
                )
                bos_bad |= (
                    full[:2] == [pair_tokenizer.bos_id] * 2 or prompt.count(pair_tokenizer.bos_id) > spelled
                )
        counts["prompt_mismatch"] += int(mismatch)
        counts["eos_errors"] += int(eos_bad)
        counts["bos_errors"] += int(bos_bad)
    return counts
