"""A causal-LM trunk with a scalar head: reward models and PPO value models.

The head maps each position's final hidden state to one number, so `forward` gives a value per
token (what PPO's value model needs); a *reward* is the value at the last real token of the
response, i.e. the EOS that closes it (InstructGPT, Ouyang et al. 2022, section 3.5: "a scalar
output" read after the final token). Rows are right-padded and the last token is found from the
lengths, never from `input_ids == pad_id`: SmolLM2's pad is its EOS, so comparing ids would land
one token early on every response (DESIGN.md section 5).

On-disk layout written by `save_scalar_model` (and by checkpoints, through `save_pretrained`):

    full trunk (version 2): the layout of transformers' `AutoModelForSequenceClassification`
    (as TRL's reward models), so other tools load it and get the same scores:
        DIR/config.json             the trunk's config, architecture *ForSequenceClassification,
                                    num_labels 1, pad_token_id the tokenizer's
        DIR/model.safetensors       the trunk's weights and "score.weight" [1, hidden], no bias
        DIR/preftune_scalar.json    format marker, "full", base model name, hidden size
    LoRA trunk:
        DIR/backbone/               a peft adapter on the trunk of the base model named in
                                    preftune_scalar.json; DIR/head.safetensors the head
    DIR/tokenizer*.json, ...        the tokenizer, as `save_pretrained` writes it

transformers reads the score at the last token that is not the pad token, preftune at the last
real token: the same position unless the tokenizer's pad is its EOS (SmolLM2), where
transformers lands one token early. Version 1 folders (DIR/backbone/ + DIR/head.safetensors with a
bias) still load. A policy loader pointed at any of these says it is a reward model.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch

from ..config import ConfigError
from ..data.batching import PackedSequences, SequenceBatch, collate_sequences
from ..data.schema import Message, user_prompt
from ..data.tokenize import PairTokenizer
from .load import (
    LoraSettings,
    ModelLoadError,
    load_policy,
    load_tokenizer,
    loadable_base_name,
    quiet_transformers,
    run_final_folder,
    save_model,
)
from .logprobs import packed_outputs

SCALAR_FORMAT = "preftune-scalar-head"
SCALAR_VERSION = 2  # 1: full trunk in backbone/, head with a bias in head.safetensors
META_FILE = "preftune_scalar.json"
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"


def _is_peft(module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


class ScalarHeadModel(torch.nn.Module):
    """`backbone` (a transformer trunk, optionally LoRA-wrapped) + `head` (hidden -> 1).

    `base_model_name` names the causal LM the trunk came from; a LoRA model needs it to rebuild
    its base on load (a full model saves the whole trunk and does not).
    """

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Linear, base_model_name: str | None = None,
                 pad_token_id: int | None = None):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.base_model_name = base_model_name
        self.pad_token_id = pad_token_id  # recorded in a saved sequence-classification config

    @property
    def is_lora(self) -> bool:
        return _is_peft(self.backbone)

    @property
    def hidden_size(self) -> int:
        return self.head.in_features

    def forward(self, input_ids, attention_mask, position_ids=None, **attention_kwargs) -> torch.Tensor:
        """Per-position scalars [B, T] (fp32). `attention_mask` may be [B, T] or a 4-D mask;
        `attention_kwargs` go to the attention function (the spans of packed rows)."""
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **attention_kwargs,
        ).last_hidden_state
        return self.head(hidden).squeeze(-1).float()

    # -- saving: `save_pretrained` is what `load.write_pretrained` (and so checkpoints) call ------
    names_its_base_on_save = True  # `write_pretrained` passes the final folder and the tokenizer

    def save_pretrained(self, folder: str | Path, final_folder: str | Path | None = None, tokenizer=None) -> None:
        """Write the layout described in the module docstring into `folder` (not atomic: see
        `save_scalar_model`; `final_folder` is where it will end up, for a LoRA trunk's base path)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        final_folder = Path(final_folder or folder)
        # A head with a bias (a version-1 model loaded and saved again) keeps the version-1 layout:
        # transformers' "score" has no bias, so that layout could not give the same scores.
        has_bias = self.head.bias is not None and bool(self.head.bias.detach().abs().max() != 0)
        if self.is_lora or has_bias:
            if self.is_lora:
                # The adapter names a base peft can load (AutoModel + this adapter = the trunk).
                with loadable_base_name(self.backbone, folder / BACKBONE_DIR, final_folder / BACKBONE_DIR, tokenizer,
                                        base_name=self.base_model_name):  # fmt: skip
                    # Offline: peft's default would ask the hub whether embeddings were resized (never).
                    self.backbone.save_pretrained(folder / BACKBONE_DIR, save_embedding_layers=False)
            else:
                self.backbone.save_pretrained(folder / BACKBONE_DIR)
            head = {"weight": self.head.weight.detach().float().cpu().contiguous()}
            if self.head.bias is not None:
                head["bias"] = self.head.bias.detach().float().cpu().contiguous()
            save_file(head, str(folder / HEAD_FILE))
        else:
            self.as_sequence_classifier().save_pretrained(folder)
        meta = {
            "format": SCALAR_FORMAT,
            "version": 1 if has_bias and not self.is_lora else SCALAR_VERSION,
            "backbone": "lora" if self.is_lora else "full",
            "base_model": self.base_model_name,
            "hidden_size": self.hidden_size,
            "read_at": "last real token of each right-padded row (the response's closing EOS)",
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def as_sequence_classifier(self, pad_token_id: int | None = None):
        """This model as transformers' `AutoModelForSequenceClassification` (num_labels 1), sharing
        nothing with it: what a full reward model saves, and what other tools load back."""
        from transformers import AutoModelForSequenceClassification

        config = copy.deepcopy(self.backbone.config)
        config.num_labels = 1
        config.architectures = None  # set by save_pretrained from the class
        config.pad_token_id = pad_token_id if pad_token_id is not None else self.pad_token_id
        classifier = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        trunk = getattr(classifier, classifier.base_model_prefix)
        trunk.load_state_dict({k: v.float() for k, v in self.backbone.state_dict().items()})
        with torch.no_grad():
            classifier.score.weight.copy_(self.head.weight.float())
        return classifier

    def merge_and_unload(self) -> ScalarHeadModel:
        """Fold LoRA adapters into the trunk, in place (as peft does); a full model is returned as is."""
        if self.is_lora:
            self.backbone = self.backbone.merge_and_unload()
        return self


# ----------------------------------------------------------------------------- building


def _new_head(hidden_size: int, seed: int) -> torch.nn.Linear:
    # No bias, as transformers' sequence-classification head ("score"): Bradley-Terry sees only
    # reward differences, so a bias would get no gradient from it anyway.
    head = torch.nn.Linear(hidden_size, 1, bias=False)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        # Small outputs at the start (std 1/sqrt(H+1), the init of Ziegler et al. 2019's value
        # head): the first rewards are near zero, so early Bradley-Terry gradients are sane.
        head.weight.normal_(0.0, 1.0 / math.sqrt(hidden_size + 1))
    return head


def _lora_on_trunk(trunk: torch.nn.Module, settings: LoraSettings, seed: int, top_layers: int = 0):
    """peft LoRA on a bare trunk (no LM head): FEATURE_EXTRACTION passes hidden states through.

    `top_layers` > 0 adapts only the last N transformer blocks. Nothing below them then needs a
    gradient, so autograd stops there: the backward pass shrinks in proportion (on a CPU, the
    difference between a benchmark that fits in minutes and one that does not).
    """
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    options = {}
    if top_layers > 0:
        layers = getattr(trunk, "layers", None)
        if layers is None or top_layers > len(layers):
            raise ConfigError("--lora-top-layers", 0, f"{top_layers} is more than the trunk's {len(layers or [])} blocks")
        # peft cannot restrict a string spec ("all-linear") to some layers: list the names.
        if isinstance(targets, str):
            targets = sorted(
                {n.rsplit(".", 1)[-1] for n, m in layers.named_modules() if isinstance(m, torch.nn.Linear)}
            )
        options = {"layers_to_transform": list(range(len(layers) - top_layers, len(layers))), "layers_pattern": "layers"}
    config = LoraConfig(
        task_type="FEATURE_EXTRACTION",
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets) if not isinstance(targets, str) else targets,
        **options,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(trunk, config)


def is_scalar_model_folder(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def from_causal_lm(
    name: str,
    *,
    lora: LoraSettings | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    lora_top_layers: int = 0,
) -> tuple[ScalarHeadModel, object]:
    """A scalar-head model on the trunk of the causal LM `name` (any name `load_policy` takes).

    The LM head is dropped and a fresh head (seeded by `seed`) goes on top. With `lora`, only the
    adapters and the head train. `name` may also be a reward-model folder: it loads as saved
    (head included, e.g. a PPO value model initialised from the reward model) and, with `lora`,
    any adapter it has is merged before fresh adapters go on. `lora_top_layers` > 0 puts the
    adapters on the last N blocks only (see `_lora_on_trunk`).
    """
    if is_scalar_model_folder(name):
        model, tokenizer = load_scalar_model(name)
        if lora is not None:
            model.merge_and_unload()
            model.backbone = _lora_on_trunk(model.backbone, lora, seed, lora_top_layers)
        return model.to(device), tokenizer
    causal_lm, tokenizer = load_policy(name, seed=seed)
    base_name = causal_lm.name_or_path
    if _is_peft(causal_lm):  # an adapter folder (e.g. a DPO run): its merged weights are the base
        causal_lm = causal_lm.merge_and_unload()
        base_name = str(Path(name).expanduser().resolve())
    trunk = causal_lm.base_model  # LlamaForCausalLM.model and the like: everything but the LM head
    head = _new_head(trunk.config.hidden_size, seed)
    if lora is not None:
        trunk = _lora_on_trunk(trunk, lora, seed, lora_top_layers)
    return ScalarHeadModel(trunk, head, base_name, tokenizer.pad_token_id).to(device), tokenizer


# ----------------------------------------------------------------------------- save / load


def save_scalar_model(
    model: ScalarHeadModel, tokenizer, out_dir: str | Path, *, merged: bool = False
) -> Path:
    """Write `model` (+ tokenizer) to `out_dir` atomically; `merged=True` folds LoRA adapters into
    a full trunk first (on a copy: `model` keeps its adapters)."""
    if merged and model.is_lora:
        model = copy.deepcopy(model).merge_and_unload()
    return save_model(model, tokenizer, out_dir)


def load_scalar_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ScalarHeadModel, object]:
    """Load what `save_scalar_model` (or a reward checkpoint) wrote. Trainable as saved: all weights
    for a full model, adapters + head for LoRA; call `.requires_grad_(False)` for a frozen judge."""
    from safetensors.torch import load_file

    quiet_transformers()
    folder = run_final_folder(Path(path).expanduser())
    what = f"reward model {str(path)!r}"
    if not folder.is_dir():
        raise ModelLoadError(what, "no such folder")
    if not is_scalar_model_folder(folder):
        raise ModelLoadError(what, f"no {META_FILE} in it (not a folder written by `preftune rm`, nor a run folder with final/)")
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(what, f"{folder / META_FILE}: {exc}") from exc
    if meta.get("format") != SCALAR_FORMAT or meta.get("version") not in (1, SCALAR_VERSION):
        raise ModelLoadError(
            what, f"{META_FILE} has format {meta.get('format')!r} version {meta.get('version')!r}"
        )
    tokenizer = load_tokenizer(str(folder))
    if meta["backbone"] == "full" and (folder / "config.json").is_file():
        return _load_sequence_classifier(folder, meta, tokenizer, what).to(device), tokenizer
    try:
        head_state = load_file(str(folder / HEAD_FILE))
    except Exception as exc:  # missing or corrupt file: one line
        raise ModelLoadError(what, f"{folder / HEAD_FILE}: {exc}") from exc
    backbone_dir = folder / BACKBONE_DIR
    if meta["backbone"] == "lora":
        from peft import PeftModel

        base, _ = load_policy(meta["base_model"])
        try:
            backbone = PeftModel.from_pretrained(base.base_model, str(backbone_dir), is_trainable=True)
        except Exception as exc:
            raise ModelLoadError(what, f"adapter {backbone_dir} on {meta['base_model']!r}: {exc}") from exc
    else:
        from transformers import AutoModel

        try:
            backbone = AutoModel.from_pretrained(str(backbone_dir), dtype=torch.float32)
        except Exception as exc:
            raise ModelLoadError(what, exc) from exc
    head = torch.nn.Linear(int(meta["hidden_size"]), 1, bias="bias" in head_state)
    head.load_state_dict(head_state)
    return ScalarHeadModel(backbone, head, meta.get("base_model"), tokenizer.pad_token_id).to(device), tokenizer


def _load_sequence_classifier(folder: Path, meta: dict, tokenizer, what: str) -> ScalarHeadModel:
    from transformers import AutoModelForSequenceClassification

    try:
        classifier = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32)
    except Exception as exc:
        raise ModelLoadError(what, exc) from exc
    trunk = getattr(classifier, classifier.base_model_prefix)
    head = torch.nn.Linear(int(meta["hidden_size"]), 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(classifier.score.weight)
    return ScalarHeadModel(trunk, head, meta.get("base_model"), classifier.config.pad_token_id)


# ----------------------------------------------------------------------------- reading rewards


def last_token_values(values: torch.Tensor, mask_or_lengths: torch.Tensor) -> torch.Tensor:
    """values [B, T] at each row's last real token -> [B].

    `mask_or_lengths` is a right-padded attention mask [B, T] or the row lengths [B]. Lengths
    come from the mask's sum, never from comparing ids with the pad id (pad may equal EOS).
    """
    lengths = mask_or_lengths.sum(-1) if mask_or_lengths.dim() == 2 else mask_or_lengths
    if lengths.shape != values.shape[:1]:
        raise ValueError(f"last_token_values: {tuple(lengths.shape)} lengths for {values.shape[0]} rows")
    if bool((lengths < 1).any()) or bool((lengths > values.shape[1]).any()):
        raise ValueError("last_token_values: every row needs between 1 and T real tokens")
    last = (lengths.long() - 1).clamp(min=0).unsqueeze(1)
    return values.gather(1, last).squeeze(1)


def reward_of_sequences(model: ScalarHeadModel, batch: SequenceBatch | PackedSequences) -> torch.Tensor:
    """One reward per sequence of `batch`: the head's value at its last real token.

    Right-padded rows, or prefix-shared packed rows (`--batching fast`), where each sequence's
    last token is found by `batch.last_index` and the trunk takes the 4-D mask and position ids.
    """
    if isinstance(batch, PackedSequences):
        values = packed_outputs(
            lambda ids, mask, positions, **spans: model(ids, mask, positions, **spans), model.backbone, batch
        )
        return values[batch.last_index]
    values = model(batch.input_ids, batch.attention_mask)
    return last_token_values(values, batch.attention_mask)


@torch.no_grad()
def score_responses(
    model: ScalarHeadModel,
    tokenizer,
    prompts: list[str | list[Message]],
    responses: list[str],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    max_prompt_length: int = 512,
) -> list[float]:
    """Rewards of (prompt, response) texts, tokenized by the one path (`data/tokenize.py`): the
    same ids a pair file gives in training, so a judge and `preftune score` agree exactly."""
    if len(prompts) != len(responses):
        raise ValueError(f"score_responses: {len(prompts)} prompts but {len(responses)} responses")
    pair_tokenizer = PairTokenizer(tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        messages = user_prompt(prompt) if isinstance(prompt, str) else list(prompt)
        prompt_ids, kept, _ = pair_tokenizer.encode_prompt(messages)
        budget = max_length - len(prompt_ids)
        response_ids, _ = pair_tokenizer.encode_response(
            kept, pair_tokenizer.render_prompt(kept), Message("assistant", response), budget
        )
        rows.append((prompt_ids, response_ids))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # Batches of similar lengths waste little on padding; the scores go back in the input order.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    scores = [0.0] * len(rows)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate_sequences([rows[i] for i in chunk], tokenizer.pad_token_id).to(device)
            for i, score in zip(chunk, reward_of_sequences(model, batch).tolist(), strict=True):
                scores[i] = score
    finally:
        model.train(was_training)
    return scores
