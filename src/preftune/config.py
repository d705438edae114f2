"""Configs are flat dataclasses: one `setting(...)` per field, with its help text.

A command's config is resolved in this order: the dataclass defaults, then a YAML file
(`--config FILE.yaml`), then the flags given on the command line. Required settings have no default
and must come from the file or a flag. The resolved config is written as `config.yaml` into every
run folder and checkpoint, and reads back to an equal object.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .data.schema import DataError

C = TypeVar("C")


class ConfigError(DataError):
    """A bad config file or value: `FILE:LINE: reason`, like every input error."""


@dataclass(frozen=True)
class Check:
    """A rule a setting's value must follow, and a value that breaks it (the flag-walking test
    feeds `breaking_value` to every flag, so a new setting with a rule is tested by itself)."""

    accepts: Callable[[Any], bool]
    reason: str
    breaking_value: Any
    choices: tuple[str, ...] = ()  # for a setting that takes one of a few names (shown by --help)


def at_least(low: float) -> Check:
    return Check(lambda v: v >= low, f"must be >= {low}, got {{value}}", low - 1)


def above(low: float) -> Check:
    return Check(lambda v: v > low, f"must be > {low}, got {{value}}", low)


def fraction(*, below_one: bool = False, above_zero: bool = False) -> Check:
    """A value in [0, 1], (0, 1], [0, 1) or (0, 1)."""
    low, high = ("(" if above_zero else "["), (")" if below_one else "]")
    return Check(
        lambda v: (v > 0 if above_zero else v >= 0) and (v < 1 if below_one else v <= 1),
        f"must be in {low}0, 1{high}, got {{value}}",
        -0.1,
    )


def one_of(*choices: str) -> Check:
    return Check(lambda v: v in choices, f"must be one of {', '.join(choices)}, got {{value!r}}", "bogus", choices)


DEVICE = Check(lambda v: v in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", v) is not None,
               "must be auto, cpu, cuda, cuda:N or mps, got {value!r}", "tpu")  # fmt: skip


def setting(default: Any = dataclasses.MISSING, help: str = "", check: Check | None = None, **kwargs: Any) -> Any:
    """A config field with its help text (shown by `--help` and in the saved config's comments) and
    the rule its value must follow, checked by `resolve_config` for flags and files alike."""
    if isinstance(default, list | dict):
        kwargs["default_factory"] = lambda d=default: type(d)(d)
        default = dataclasses.MISSING
    return dataclasses.field(default=default, metadata={"help": help, "check": check}, **kwargs)


def check_value(field: dataclasses.Field, value: Any, where: str) -> None:
    """Raise `ConfigError(where, 0, reason)` when `value` breaks the field's rule (None passes)."""
    check = field.metadata.get("check")
    if check is not None and value is not None and not check.accepts(value):
        raise ConfigError(where, 0, check.reason.format(value=value))


def check_relations(config: Any) -> None:
    """Rules between settings (`relations()` of the config class), as one-line errors."""
    for flag, ok, reason in config.relations() if hasattr(config, "relations") else ():
        if not ok:
            raise ConfigError(flag, 0, reason)


def help_of(cls: type, name: str) -> str:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}[name]


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check and convert one value to a field's annotated type (flat types only, by design)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(err.reason)
        raise ConfigError(where, 0, errors[0] if errors else f"bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise ConfigError(where, 0, f"must be one of {list(typing.get_args(annotation))}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(where, 0, f"must be a list, got {type(value).__name__}")
        return [_coerce(v, item, where) for v in value]
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(where, 0, f"must be true or false, got {value!r}")
        return value
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(where, 0, f"must be a number, got {value!r}")
        try:
            number = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(where, 0, f"must be {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(where, 0, f"must be a whole number, got {value!r}")
        return number
    if annotation in (str, Path):
        if not isinstance(value, str | Path):
            raise ConfigError(where, 0, f"must be a string, got {type(value).__name__}")
        return str(value)
    return value


def _yaml_settings(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping in a YAML file and the 1-based line of each key (for error messages)."""
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(path, 0, "no such config file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(path, (mark.line + 1) if mark else 0, f"invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict) or node is None or not isinstance(node, yaml.MappingNode):
        raise ConfigError(path, 1, "a config file must be a mapping of setting: value")
    lines = {key.value: key.start_mark.line + 1 for key, _ in node.value}
    return data, lines


def resolve_config(cls: type[C], config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults < YAML file < flags. `overrides` holds only the flags the user actually gave."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        data, lines = _yaml_settings(path)
        for key, value in data.items():
            key_name = str(key).replace("-", "_")
            if key_name not in fields:
                raise ConfigError(path, lines.get(key, 0), f"unknown setting '{key}'; known: {', '.join(fields)}")
            try:
                values[key_name] = _coerce(value, hints[key_name], str(path))
                check_value(fields[key_name], values[key_name], str(path))
            except ConfigError as err:
                raise ConfigError(path, lines.get(key, 0), f"{key}: {err.reason}") from None
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise ConfigError("--" + key.replace("_", "-"), 0, "unknown setting")
        try:
            values[key] = _coerce(value, hints[key], "--" + key.replace("_", "-"))
            check_value(fields[key], values[key], "--" + key.replace("_", "-"))
        except ConfigError as err:
            raise ConfigError(err.path, 0, err.reason) from None
    missing = [
        name
        for name, f in fields.items()
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise ConfigError(str(config_file or "command line"), 0, f"missing required setting(s): {flags}")
    config = cls(**values)
    check_relations(config)
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, each setting preceded by its help text as a comment."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {type(config).__name__}: resolved settings (defaults < config file < flags)"]
    for f in dataclasses.fields(config):
        if f.metadata.get("help"):
            lines.append(f"# {f.metadata['help']}")
        lines.append(yaml.safe_dump({f.name: getattr(config, f.name)}, default_flow_style=False, sort_keys=False).rstrip())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_saved_config(cls: type[C], path: str | Path) -> C:
    """Read back a config written by `save_config`."""
    return resolve_config(cls, path)


# ---- the commands' configs ---------------------------------------------------------------------

ROLLOUT_ENGINE_HELP = (
    "Sampling engine: slots (continuous batching over a preallocated KV cache; Llama-family models), "
    "hf (transformers' generate; any model), vllm (CUDA, extra [gpu]); auto: slots where it applies, else hf."
)
ROLLOUT_PRECISION_HELP = "Sampling precision: auto (bf16 on CUDA and on CPUs with bf16 units, else fp32), fp32 or bf16."


# The sampling settings of every command that samples (ppo, grpo, online-dpo, bon), declared once.
# Where the trainers' KL to the reference is computed from the sampled tokens, top-k and top-p bias
# it: those commands pass KL_BIAS_NOTE.
KL_BIAS_NOTE = " Biases the KL estimate; a warning says so."
RolloutEngine = typing.Literal["auto", "slots", "hf", "vllm"]
RolloutPrecision = typing.Literal["auto", "fp32", "bf16"]


def max_new_tokens_setting(default: int, note: str = "") -> Any:
    return setting(default, help="Longest completion; a completion cut here has no EOS." + note, check=at_least(1))


def temperature_setting(note: str = " The log-probs of ratio and KL use the same one.") -> Any:
    return setting(1.0, help="Sampling temperature." + note, check=above(0))


def top_k_setting(note: str = "") -> Any:
    return setting(0, help="Top-k sampling (0: off)." + note, check=at_least(0))


def top_p_setting(note: str = "") -> Any:
    return setting(1.0, help="Nucleus sampling (1: off)." + note, check=fraction(above_zero=True))


def rollout_engine_setting() -> Any:
    return setting("auto", help=ROLLOUT_ENGINE_HELP)


def rollout_precision_setting() -> Any:
    return setting("auto", help=ROLLOUT_PRECISION_HELP)
# The names of losses/dpo.py's DPO_LOSSES (a test keeps them equal; config must not import torch).
DPO_LOSS_NAMES = ("sigmoid", "robust", "cdpo", "ipo", "hinge", "simpo")


@dataclass
class TrainConfig:
    """Settings shared by sft, dpo, rm and ppo; each loop's config adds its own."""

    model: str = setting(help="Policy to train: local folder, hub name, or alias (smollm2-135m, tiny).")
    data: str = setting(help="Training data file (any format `preftune data inspect` reads).")
    out: str = setting(help="Run folder: config.yaml, metrics.jsonl, checkpoints/, final/.")
    format: str | None = setting(None, help="Data format (pairs, messages, hh, sharegpt); default: detect.", check=one_of("pairs", "messages", "hh", "sharegpt"))
    eval_data: str | None = setting(None, help="Held-out data file; without it, --eval-split of --data is held out.")
    eval_split: float = setting(0.0, help="Fraction of --data held out for evaluation when --eval-data is not given.", check=fraction(below_one=True))
    eval_every: int = setting(0, help="Evaluate every N optimizer steps (0: only at the end, if there is eval data).", check=at_least(0))
    max_steps: int = setting(0, help="Optimizer steps to run; 0 means use --epochs.", check=at_least(0))
    epochs: float = setting(1.0, help="Passes over the training data (used when --max-steps is 0).", check=above(0))
    batch_size: int = setting(4, help="Pairs (or sequences) per micro-batch.", check=at_least(1))
    grad_accum: int = setting(1, help="Micro-batches per optimizer step.", check=at_least(1))
    lr: float = setting(5e-6, help="Peak learning rate (AdamW).", check=above(0))
    weight_decay: float = setting(0.0, help="AdamW weight decay.", check=at_least(0))
    warmup_steps: int = setting(0, help="Linear warmup steps.", check=at_least(0))
    warmup_ratio: float = setting(0.0, help="Warmup as a fraction of all steps (used when --warmup-steps is 0).", check=fraction())
    scheduler: str = setting("linear", help="Decay after warmup: linear, cosine or constant.", check=one_of("linear", "cosine", "constant"))
    max_grad_norm: float = setting(1.0, help="Clip the gradient norm to this (0 disables clipping).", check=at_least(0))
    max_length: int = setting(1024, help="Max tokens of prompt + response.", check=at_least(2))
    max_prompt_length: int = setting(512, help="Max prompt tokens (the oldest turns go first).", check=at_least(1))
    lora: bool = setting(False, help="Train a LoRA adapter instead of all weights.")
    lora_r: int = setting(16, help="LoRA rank.", check=at_least(1))
    lora_alpha: int = setting(32, help="LoRA alpha.", check=at_least(1))
    lora_dropout: float = setting(0.0, help="LoRA dropout.", check=fraction(below_one=True))
    merge: bool = setting(False, help="With --lora, also write a merged full model to final/merged/.")
    seed: int = setting(0, help="Seed for weights, data order and sampling.", check=at_least(0))
    log_every: int = setting(1, help="Log metrics every N optimizer steps.", check=at_least(1))
    save_every: int = setting(0, help="Checkpoint every N optimizer steps (0: only at the end and on signals).", check=at_least(0))
    keep_last: int = setting(2, help="Checkpoints to keep (0: all).", check=at_least(0))
    resume: bool = setting(False, help="Continue from the newest checkpoint in --out.")
    overwrite: bool = setting(False, help="Replace the run already in --out (without it, or --resume, a used --out is refused).")
    report_to: str = setting("none", help="Mirror metrics to tensorboard, wandb or none.", check=one_of("none", "tensorboard", "wandb"))
    precision: str = setting("auto", help="auto (bf16 autocast on CUDA and on CPUs with bf16 units: amx_bf16, avx512_bf16, Arm bf16; fp32 on other CPUs; the start line says which and why), fp32 or bf16.", check=one_of("auto", "fp32", "bf16"))
    device: str = setting("auto", help="auto, cpu or cuda.", check=DEVICE)
    batching: typing.Literal["fast", "padded"] = setting("fast", help="Pair layout: fast (prefix-shared, packed, LM head only on completions) or padded (the plain reference layout).")
    pack_length: int = setting(0, help="With --batching fast, tokens per packed row (0: as long as the longest pair in the batch; 1: one pair per row, no packing).", check=at_least(0))
    activation_checkpointing: typing.Literal["off", "selective", "full"] = setting("off", help="Recompute activations in the backward pass to save memory: selective (element-wise ops only; about half the activation memory, little time) or full (whole blocks; least memory, about 1/3 slower).")
    fsdp: bool = setting(False, help="Under torchrun, shard parameters, gradients and optimizer state over the processes (FSDP2) instead of replicating them (DDP, the default); a no-op in one process.")
    fsdp_offload: bool = setting(False, help="With --fsdp on CUDA, keep the sharded parameters, gradients and optimizer state in CPU memory (slower; for models that do not fit).")
    dist_backend: str = setting("auto", help="Under torchrun: auto (nccl on CUDA, gloo on CPU), nccl or gloo.", check=one_of("auto", "nccl", "gloo"))
    dist_timeout: float = setting(1800.0, help="Under torchrun, seconds a collective operation waits for the other processes before the run fails (a dead or hung worker then ends it with an error, not a hang).", check=above(0))
    compile: bool = setting(False, help="torch.compile each transformer block (worth it on CUDA; the first steps are slow while it compiles).")
    tf32: bool = setting(True, help="On CUDA, let fp32 matmuls use TF32 tensor cores (Ampere and newer); no effect on CPU.")

    def relations(self) -> list[tuple[str, bool, str]]:
        """Rules between settings: (flag to blame, holds, reason)."""
        return [
            ("--max-prompt-length", self.max_prompt_length < self.max_length,
             f"{self.max_prompt_length} must be below --max-length {self.max_length}"),
            ("--eval-split", not (self.eval_split > 0 and self.eval_data), "give --eval-data or --eval-split, not both"),
            ("--merge", self.lora or not self.merge, "needs --lora (without it final/ is already a full model)"),
        ]  # fmt: skip


@dataclass
class SFTConfig(TrainConfig):
    """`preftune sft`: supervised fine-tuning on responses (the chosen side of pairs, or prompt/response rows)."""

    def relations(self) -> list[tuple[str, bool, str]]:
        return super().relations() + [
            ("--eval-split", self.eval_split == 0, "sft holds out data only from --eval-data; give that instead"),
        ]


@dataclass
class DPOConfig(TrainConfig):
    loss: str = setting("sigmoid", help="sigmoid (DPO), robust, cdpo, ipo, hinge or simpo.", check=one_of(*DPO_LOSS_NAMES))
    beta: float = setting(0.1, help="Strength of the implicit KL constraint (DPO's beta).", check=above(0))
    label_smoothing: float = setting(0.0, help="Label-flip rate epsilon for robust and cdpo.", check=Check(lambda v: 0 <= v < 0.5, "must be in [0, 0.5) (a flip rate of 1/2 or more inverts the labels), got {value}", 0.5))
    length_normalize: bool = setting(False, help="ipo: use per-token mean log-probs instead of sums.")
    gamma: float = setting(0.5, help="simpo: target reward margin.", check=at_least(0))
    sft_weight: float = setting(0.0, help="Weight of an NLL term on the chosen responses (RPO), one mean over all their tokens in the micro-batch, as TRL's \"sft\" loss term.", check=at_least(0))
    ref: str = setting("auto", help="Reference log-probs: precompute, copy, adapter (auto: adapter with --lora, else precompute).", check=one_of("auto", "precompute", "copy", "adapter", "none"))


@dataclass
class KTOConfig(TrainConfig):
    """`preftune kto`: learn from thumbs up / down on single answers (Ethayarajh et al. 2024)."""

    format: str | None = setting(None, help="Data format: unpaired ({prompt, completion, label}), or a pair format (pairs, messages, hh, sharegpt) split into chosen -> true, rejected -> false; default: detect.", check=one_of("unpaired", "pairs", "messages", "hh", "sharegpt"))
    batch_size: int = setting(4, help="Examples per micro-batch; at least 2 (the KL estimate pairs each prompt with another example's answer).", check=at_least(2))
    loss: str = setting("kto", help="kto (Ethayarajh et al. 2024: against the batch's KL estimate) or apo_zero_unpaired (D'Oosterlinck et al. 2024: anchored at the reference, no KL estimate).", check=one_of("kto", "apo_zero_unpaired"))
    beta: float = setting(0.1, help="Strength of the implicit KL constraint (KTO's beta).", check=above(0))
    desirable_weight: float = setting(1.0, help="lambda_D: weight of the desirable (thumbs-up) examples' loss.", check=above(0))
    undesirable_weight: float = setting(1.0, help="lambda_U: weight of the undesirable (thumbs-down) examples' loss; the paper suggests lambda_D n_D / (lambda_U n_U) in [1, 4/3].", check=above(0))
    ref: str = setting("auto", help="Reference model: copy (a frozen copy of the starting policy) or adapter (with --lora, the adapter switched off); auto: adapter with --lora, else copy. (No precompute: the KL estimate's mismatched pairs change with every shuffled batch.)", check=one_of("auto", "copy", "adapter"))
    ref_model: str | None = setting(None, help="A different reference model (local folder, hub name or alias); default: the policy as loaded.")

    def relations(self) -> list[tuple[str, bool, str]]:
        return super().relations() + [
            ("--ref", not (self.ref == "adapter" and not self.lora), "adapter needs --lora (the reference is the base with the adapter disabled)"),
            ("--ref-model", not (self.ref_model and self.ref == "adapter"), "a separate reference model cannot be the policy's disabled adapter; drop --ref adapter"),
        ]  # fmt: skip


@dataclass
class RMConfig(TrainConfig):
    """`preftune rm`: a Bradley-Terry reward model (causal-LM trunk + scalar head)."""

    use_margin: bool = setting(True, help="Subtract each pair's margin (from the data) from the reward gap: -log sigmoid(r_c - r_r - m).")
    center_coef: float = setting(0.0, help="Weight of the centering term (r_c + r_r)^2 that keeps rewards near 0 (0.01 is usual).", check=at_least(0))
    lora_top_layers: int = setting(0, help="With --lora, adapt only the last N transformer blocks (0: all); backward stops below them, much faster on CPU.", check=at_least(0))


@dataclass(kw_only=True)
class PPOConfig(TrainConfig):
    """`preftune ppo`: RLHF with PPO under a KL penalty (Ziegler et al. 2019; InstructGPT).

    One iteration = one rollout of --rollout-batch prompts + --ppo-epochs passes over it in
    minibatches of --batch-size x --grad-accum completions. Schedules (warmup, decay) and
    --save-every / --eval-every / --log-every count iterations. From TrainConfig, ppo does not use
    --data, --format, --epochs, --max-steps or --max-length; --eval-data is a held-out prompts file.
    """

    data: str | None = setting(None, help="Unused by ppo: prompts come from --prompts.")
    eval_split: float = setting(0.0, help="Fraction of --prompts held out for evaluation when --eval-data is not given.", check=fraction(below_one=True))
    prompts: str = setting(help='Prompts: JSONL of {"prompt": str | [messages]}, or .txt with one prompt per line.')
    reward: str = setting(help="What scores completions: rm:DIR (a reward model), judge:sentiment or judge:readability.")
    iterations: int = setting(100, help="PPO iterations (rollout + update).", check=at_least(1))
    rollout_batch: int = setting(16, help="Prompts sampled per iteration, one completion each.", check=at_least(1))
    ppo_epochs: int = setting(4, help="Passes over each rollout.", check=at_least(1))
    max_new_tokens: int = max_new_tokens_setting(48)
    temperature: float = temperature_setting()
    top_k: int = top_k_setting(KL_BIAS_NOTE)
    top_p: float = top_p_setting(KL_BIAS_NOTE)
    kl_coef: float = setting(0.05, help="KL penalty coefficient (the initial value with --target-kl).", check=at_least(0))
    target_kl: float = setting(0.0, help="Adaptive KL controller target, in nats per completion (0: fixed --kl-coef).", check=at_least(0))
    kl_horizon: float = setting(10000.0, help="Adaptive controller horizon, in completions (Ziegler et al. 2019).", check=above(0))
    kl_estimator: str = setting("k1", help="Per-token KL estimator in the penalty: k1 (log-ratio) or k3 (unbiased, >= 0).", check=one_of("k1", "k2", "k3"))
    gamma: float = setting(1.0, help="GAE discount.", check=fraction())
    lam: float = setting(0.95, help="GAE lambda.", check=fraction())
    clip_range: float = setting(0.2, help="PPO ratio clip.", check=above(0))
    clip_range_value: float = setting(0.2, help="Value clip around the rollout-time value.", check=above(0))
    vf_coef: float = setting(0.1, help="Weight of the value loss in the total loss.", check=at_least(0))
    max_approx_kl: float = setting(0.0, help="Stop an iteration's PPO epochs once a minibatch's policy/approxkl_avg exceeds this (0: never).", check=at_least(0))
    value: str = setting("separate", help="Value model: separate (scalar-head model; from the reward model with rm:DIR, else the policy's weights) or shared (a head on the policy trunk).", check=one_of("separate", "shared"))
    missing_eos_penalty: float = setting(0.0, help="Subtracted from the score of a completion that hit --max-new-tokens without EOS.", check=at_least(0))
    score_clip: float = setting(0.0, help="Clip scores to [-c, c] (0: no clip).", check=at_least(0))
    normalize_scores: bool = setting(False, help="Whiten each rollout's scores (mean 0, std 1) before the KL penalty.")
    rollout_engine: RolloutEngine = rollout_engine_setting()
    rollout_precision: RolloutPrecision = rollout_precision_setting()

    def relations(self) -> list[tuple[str, bool, str]]:
        minibatch = self.batch_size * self.grad_accum
        unused = "is not used by ppo, which counts --iterations (rollout + update)"
        shared = [rule for rule in super().relations() if rule[0] != "--max-prompt-length"]  # no --max-length here
        return shared + [
            ("--max-steps", self.max_steps == 0, unused),
            ("--epochs", self.epochs == 1.0, unused),
            ("--data", self.data is None, "is not used by ppo: prompts come from --prompts"),
            ("--format", self.format is None, "is not used by ppo: --prompts is JSONL or .txt"),
            ("--rollout-batch", self.rollout_batch % minibatch == 0,
             f"must be a multiple of --batch-size x --grad-accum = {minibatch}, got {self.rollout_batch}"),
            ("--fsdp", not self.fsdp, "not supported by ppo (sampling would have to step every rank in "
             "lockstep); use DDP, the default under torchrun"),
        ]  # fmt: skip


@dataclass
class BoNConfig:
    """`preftune bon`: best-of-n sampling; keep the best of n completions per prompt."""

    model: str = setting(help="Policy to sample from: local folder, hub name, or alias (smollm2-135m, tiny).")
    reward: str = setting(help="What picks the best: rm:DIR, judge:sentiment or judge:readability.")
    prompts: str = setting(help='Prompts: JSONL of {"prompt": str | [messages]}, or .txt with one prompt per line.')
    out: str = setting(help="JSONL to write: prompt, best response, its score and all n scores per line.")
    n: int = setting(16, help="Completions sampled per prompt.", check=at_least(1))
    gold: str | None = setting(None, help="Optional second judge that scores the kept completion (e.g. judge:sentiment when --reward is rm:DIR).")
    max_new_tokens: int = max_new_tokens_setting(48)
    temperature: float = temperature_setting(" The KL figure is relative to this sampling distribution.")
    top_k: int = top_k_setting()
    top_p: float = top_p_setting()
    seed: int = setting(0, help="Sampling seed.", check=at_least(0))
    batch_size: int = setting(16, help="Sequences per generate call.", check=at_least(1))
    max_prompt_length: int = setting(512, help="Max prompt tokens (the oldest turns go first).", check=at_least(1))
    device: str = setting("auto", help="auto, cpu or cuda.", check=DEVICE)
    rollout_engine: RolloutEngine = rollout_engine_setting()
    rollout_precision: RolloutPrecision = rollout_precision_setting()


@dataclass(kw_only=True)
class GRPOConfig(TrainConfig):
    """`preftune grpo`: online RL with a group baseline instead of a value model (GRPO, Shao et al.
    2024; Dr. GRPO, Liu et al. 2025; RLOO, Ahmadian et al. 2024; REINFORCE++, Hu 2025).

    One iteration = sample --num-generations completions for each of --prompts-per-iteration
    prompts, score them, compute advantages, then --ppo-epochs passes over the rollout in
    minibatches of --batch-size x --grad-accum completions. Schedules and --save-every /
    --eval-every / --log-every count iterations. From TrainConfig, grpo does not use --data,
    --format, --epochs, --max-steps or --max-length; --eval-data is a held-out prompts source.
    """

    data: str | None = setting(None, help="Unused by grpo: prompts come from --prompts.")
    eval_split: float = setting(0.0, help="Fraction of --prompts held out for evaluation when --eval-data is not given.", check=fraction(below_one=True))
    prompts: str = setting(help='Prompts: JSONL of {"prompt": str | [messages]}, .txt with one prompt per line, or a built-in task: task:arithmetic[:train|test[:COUNT]] (task:arithmetic-easy: small numbers).')
    reward: str = setting(help="What scores completions: exact_match, format (the arithmetic task), judge:NAME, rm:DIR, python:MODULE:FUNCTION, or several joined by commas (summed).")
    loss: str = setting("grpo", help="grpo: mean over each completion's tokens, then over completions, advantages divided by the group std; dr_grpo: sum over tokens / (completions x --max-new-tokens), no std (Liu et al. 2025).", check=one_of("grpo", "dr_grpo"))
    advantage: str = setting("group", help="Baseline: group (the group mean; divided by the std under --loss grpo), rloo (leave-one-out mean), reinforce_pp (per-token reward-to-go whitened over the batch).", check=one_of("group", "rloo", "reinforce_pp"))
    kl_in: str = setting("auto", help="Where the KL to the reference goes: loss (GRPO eq. 3, a per-token term), reward (subtracted from the score, as RLOO and REINFORCE++ do), auto (loss for group, reward otherwise).", check=one_of("auto", "loss", "reward"))
    iterations: int = setting(100, help="Iterations (rollout + update).", check=at_least(1))
    prompts_per_iteration: int = setting(4, help="Prompts sampled per iteration.", check=at_least(1))
    num_generations: int = setting(4, help="Completions per prompt (the group size G).", check=at_least(1))
    ppo_epochs: int = setting(1, help="Passes over each rollout (GRPO's mu; 1 is on-policy).", check=at_least(1))
    max_new_tokens: int = max_new_tokens_setting(32, " Also Dr. GRPO's constant normaliser.")
    temperature: float = temperature_setting()
    top_k: int = top_k_setting(KL_BIAS_NOTE)
    top_p: float = top_p_setting(KL_BIAS_NOTE)
    kl_coef: float = setting(0.04, help="Weight of the KL to the reference (GRPO's beta; 0 skips the reference entirely).", check=at_least(0))
    kl_estimator: str = setting("k3", help="Per-token KL estimator: k1 (log-ratio), k2 or k3 (unbiased, >= 0; GRPO's eq. 4).", check=one_of("k1", "k2", "k3"))
    clip_range: float = setting(0.2, help="Ratio clip epsilon.", check=above(0))
    gamma: float = setting(1.0, help="Discount of the per-token return under --advantage reinforce_pp.", check=fraction())
    missing_eos_penalty: float = setting(0.0, help="Subtracted from the score of a completion that hit --max-new-tokens without EOS.", check=at_least(0))
    eval_generations: int = setting(1, help="Completions per held-out prompt at each evaluation.", check=at_least(1))
    rollout_engine: RolloutEngine = rollout_engine_setting()
    rollout_precision: RolloutPrecision = rollout_precision_setting()

    @property
    def rollout_size(self) -> int:
        """Completions per iteration."""
        return self.prompts_per_iteration * self.num_generations

    @property
    def kl_placement(self) -> str:
        """"loss" or "reward": --kl-in with auto resolved."""
        if self.kl_in != "auto":
            return self.kl_in
        return "loss" if self.advantage == "group" else "reward"

    def relations(self) -> list[tuple[str, bool, str]]:
        minibatch = self.batch_size * self.grad_accum
        unused = "is not used by grpo, which counts --iterations (rollout + update)"
        shared = [rule for rule in super().relations() if rule[0] != "--max-prompt-length"]  # no --max-length here
        return shared + [
            ("--max-steps", self.max_steps == 0, unused),
            ("--epochs", self.epochs == 1.0, unused),
            ("--data", self.data is None, "is not used by grpo: prompts come from --prompts"),
            ("--format", self.format is None, "is not used by grpo: --prompts is JSONL, .txt or task:NAME"),
            ("--num-generations", self.num_generations >= 2 or self.advantage == "reinforce_pp",
             f"must be 2 or more for --advantage {self.advantage} (a group of one has no baseline)"),
            ("--batch-size", self.rollout_size % minibatch == 0,
             f"--batch-size x --grad-accum = {minibatch} must divide the {self.rollout_size} completions of an "
             "iteration (--prompts-per-iteration x --num-generations)"),
            ("--fsdp", not self.fsdp, "not supported by grpo (sampling would have to step every rank in "
             "lockstep); use DDP, the default under torchrun"),
        ]  # fmt: skip


@dataclass(kw_only=True)
class OnlineDPOConfig(TrainConfig):
    """`preftune online-dpo`: DPO on pairs sampled from the policy as it trains and ranked live by a
    judge or reward model (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback").

    One iteration = two completions for each of --prompts-per-iteration prompts, the better-scored
    one chosen, then one optimizer step on the DPO loss over those pairs (micro-batches of
    --batch-size pairs). Pairs whose two scores tie are dropped (they say nothing). From
    TrainConfig, online-dpo does not use --data, --format, --epochs, --max-steps, --max-length or
    --grad-accum; --eval-data is a held-out prompts source.
    """

    data: str | None = setting(None, help="Unused by online-dpo: prompts come from --prompts.")
    eval_split: float = setting(0.0, help="Fraction of --prompts held out for evaluation when --eval-data is not given.", check=fraction(below_one=True))
    prompts: str = setting(help='Prompts: JSONL of {"prompt": str | [messages]}, .txt with one prompt per line, or task:arithmetic[-easy][:train|test[:COUNT]].')
    reward: str = setting(help="What ranks the two completions: judge:NAME, rm:DIR, exact_match / format, python:MODULE:FUNCTION, or several joined by commas (summed).")
    loss: str = setting("sigmoid", help="sigmoid (DPO), robust, cdpo, ipo or hinge (losses/dpo.py).", check=one_of("sigmoid", "robust", "cdpo", "ipo", "hinge"))
    beta: float = setting(0.1, help="DPO's beta.", check=above(0))
    label_smoothing: float = setting(0.0, help="Label-flip rate epsilon for robust and cdpo.", check=Check(lambda v: 0 <= v < 0.5, "must be in [0, 0.5), got {value}", 0.5))
    length_normalize: bool = setting(False, help="ipo: use per-token mean log-probs instead of sums.")
    iterations: int = setting(100, help="Iterations (sample pairs + one update).", check=at_least(1))
    prompts_per_iteration: int = setting(8, help="Prompts (pairs) per iteration.", check=at_least(1))
    max_new_tokens: int = max_new_tokens_setting(48)
    temperature: float = temperature_setting(" The log-probs of the DPO loss use the same one.")
    top_k: int = top_k_setting()
    top_p: float = top_p_setting()
    missing_eos_penalty: float = setting(0.0, help="Subtracted from the score of a completion that hit --max-new-tokens without EOS before ranking.", check=at_least(0))
    rollout_engine: RolloutEngine = rollout_engine_setting()
    rollout_precision: RolloutPrecision = rollout_precision_setting()

    def relations(self) -> list[tuple[str, bool, str]]:
        unused = "is not used by online-dpo, which counts --iterations (sample pairs + update)"
        shared = [rule for rule in super().relations() if rule[0] != "--max-prompt-length"]
        return shared + [
            ("--max-steps", self.max_steps == 0, unused),
            ("--epochs", self.epochs == 1.0, unused),
            ("--grad-accum", self.grad_accum == 1, "is not used by online-dpo: each iteration is one step over all its pairs"),
            ("--data", self.data is None, "is not used by online-dpo: prompts come from --prompts"),
            ("--format", self.format is None, "is not used by online-dpo: --prompts is JSONL, .txt or task:NAME"),
            ("--fsdp", not self.fsdp, "not supported by online-dpo; use DDP, the default under torchrun"),
        ]  # fmt: skip
