"""Configs are flat dataclasses: one `setting(...)` per field, with its help text.

A command's config is resolved in this order: the dataclass defaults, then a YAML file
(`--config FILE.yaml`), then the flags given on the command line. Required settings have no default
and must come from the file or a flag. The resolved config is written as `config.yaml` into every
run folder and checkpoint, and reads back to an equal object.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .data.schema import DataError

C = TypeVar("C")


class ConfigError(DataError):
    """A bad config file or value: `FILE:LINE: reason`, like every input error."""


def setting(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A config field with its help text (shown by `--help` and in the saved config's comments)."""
    if isinstance(default, list | dict):
        kwargs["default_factory"] = lambda d=default: type(d)(d)
        default = dataclasses.MISSING
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


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
            except ConfigError as err:
                raise ConfigError(path, lines.get(key, 0), f"{key}: {err.reason}") from None
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise ConfigError("--" + key.replace("_", "-"), 0, "unknown setting")
        try:
            values[key] = _coerce(value, hints[key], "--" + key.replace("_", "-"))
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
    return cls(**values)


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


@dataclass
class TrainConfig:
    """Settings shared by sft, dpo, rm and ppo; each loop's config adds its own."""

    model: str = setting(help="Policy to train: local folder, hub name, or alias (smollm2-135m, tiny).")
    data: str = setting(help="Training data file (any format `preftune data inspect` reads).")
    out: str = setting(help="Run folder: config.yaml, metrics.jsonl, checkpoints/, final/.")
    format: str | None = setting(None, help="Data format (pairs, messages, hh, sharegpt); default: detect.")
    eval_data: str | None = setting(None, help="Held-out data file; without it, --eval-split of --data is held out.")
    eval_split: float = setting(0.0, help="Fraction of --data held out for evaluation when --eval-data is not given.")
    eval_every: int = setting(0, help="Evaluate every N optimizer steps (0: only at the end, if there is eval data).")
    max_steps: int = setting(0, help="Optimizer steps to run; 0 means use --epochs.")
    epochs: float = setting(1.0, help="Passes over the training data (used when --max-steps is 0).")
    batch_size: int = setting(4, help="Pairs (or sequences) per micro-batch.")
    grad_accum: int = setting(1, help="Micro-batches per optimizer step.")
    lr: float = setting(5e-6, help="Peak learning rate (AdamW).")
    weight_decay: float = setting(0.0, help="AdamW weight decay.")
    warmup_steps: int = setting(0, help="Linear warmup steps.")
    warmup_ratio: float = setting(0.0, help="Warmup as a fraction of all steps (used when --warmup-steps is 0).")
    scheduler: str = setting("linear", help="Decay after warmup: linear, cosine or constant.")
    max_grad_norm: float = setting(1.0, help="Clip the gradient norm to this (0 disables clipping).")
    max_length: int = setting(1024, help="Max tokens of prompt + response.")
    max_prompt_length: int = setting(512, help="Max prompt tokens (the oldest turns go first).")
    lora: bool = setting(False, help="Train a LoRA adapter instead of all weights.")
    lora_r: int = setting(16, help="LoRA rank.")
    lora_alpha: int = setting(32, help="LoRA alpha.")
    lora_dropout: float = setting(0.0, help="LoRA dropout.")
    merge: bool = setting(False, help="With --lora, also write a merged full model to final/merged/.")
    seed: int = setting(0, help="Seed for weights, data order and sampling.")
    log_every: int = setting(1, help="Log metrics every N optimizer steps.")
    save_every: int = setting(0, help="Checkpoint every N optimizer steps (0: only at the end and on signals).")
    keep_last: int = setting(2, help="Checkpoints to keep.")
    resume: bool = setting(False, help="Continue from the newest checkpoint in --out.")
    overwrite: bool = setting(False, help="Replace the run already in --out (without it, or --resume, a used --out is refused).")
    report_to: str = setting("none", help="Mirror metrics to tensorboard, wandb or none.")
    precision: str = setting("auto", help="auto (fp32 on CPU, bf16 autocast on CUDA), fp32 or bf16.")
    device: str = setting("auto", help="auto, cpu or cuda.")
    batching: typing.Literal["fast", "padded"] = setting("fast", help="Pair layout: fast (prefix-shared, packed, LM head only on completions) or padded (the plain reference layout).")
    pack_length: int = setting(0, help="With --batching fast, tokens per packed row (0: as long as the longest pair in the batch; 1: one pair per row, no packing).")
    activation_checkpointing: typing.Literal["off", "selective", "full"] = setting("off", help="Recompute activations in the backward pass to save memory: selective (element-wise ops only; about half the activation memory, little time) or full (whole blocks; least memory, about 1/3 slower).")
    fsdp: bool = setting(False, help="Under torchrun, shard parameters, gradients and optimizer state over the processes (FSDP2) instead of replicating them (DDP, the default); a no-op in one process.")
    fsdp_offload: bool = setting(False, help="With --fsdp on CUDA, keep the sharded parameters, gradients and optimizer state in CPU memory (slower; for models that do not fit).")
    dist_backend: str = setting("auto", help="Under torchrun: auto (nccl on CUDA, gloo on CPU), nccl or gloo.")
    dist_timeout: float = setting(1800.0, help="Under torchrun, seconds a collective operation waits for the other processes before the run fails (a dead or hung worker then ends it with an error, not a hang).")
    compile: bool = setting(False, help="torch.compile each transformer block (worth it on CUDA; the first steps are slow while it compiles).")
    tf32: bool = setting(True, help="On CUDA, let fp32 matmuls use TF32 tensor cores (Ampere and newer); no effect on CPU.")


@dataclass
class SFTConfig(TrainConfig):
    """`preftune sft`: supervised fine-tuning on responses (the chosen side of pairs, or prompt/response rows)."""


@dataclass
class DPOConfig(TrainConfig):
    loss: str = setting("sigmoid", help="sigmoid (DPO), robust, cdpo, ipo, hinge or simpo.")
    beta: float = setting(0.1, help="Strength of the implicit KL constraint (DPO's beta).")
    label_smoothing: float = setting(0.0, help="Label-flip rate epsilon for robust and cdpo.")
    length_normalize: bool = setting(False, help="ipo: use per-token mean log-probs instead of sums.")
    gamma: float = setting(0.5, help="simpo: target reward margin.")
    sft_weight: float = setting(0.0, help="Weight of an NLL term on the chosen response (RPO).")
    ref: str = setting("auto", help="Reference log-probs: precompute, copy, adapter (auto: adapter with --lora, else precompute).")


@dataclass
class RMConfig(TrainConfig):
    """`preftune rm`: a Bradley-Terry reward model (causal-LM trunk + scalar head)."""

    use_margin: bool = setting(True, help="Subtract each pair's margin (from the data) from the reward gap: -log sigmoid(r_c - r_r - m).")
    center_coef: float = setting(0.0, help="Weight of the centering term (r_c + r_r)^2 that keeps rewards near 0 (0.01 is usual).")
    lora_top_layers: int = setting(0, help="With --lora, adapt only the last N transformer blocks (0: all); backward stops below them, much faster on CPU.")


@dataclass(kw_only=True)
class PPOConfig(TrainConfig):
    """`preftune ppo`: RLHF with PPO under a KL penalty (Ziegler et al. 2019; InstructGPT).

    One iteration = one rollout of --rollout-batch prompts + --ppo-epochs passes over it in
    minibatches of --batch-size x --grad-accum completions. Schedules (warmup, decay) and
    --save-every / --eval-every / --log-every count iterations. From TrainConfig, ppo does not use
    --data, --format, --epochs, --max-steps or --max-length; --eval-data is a held-out prompts file.
    """

    data: str | None = setting(None, help="Unused by ppo: prompts come from --prompts.")
    eval_split: float = setting(0.0, help="Fraction of --prompts held out for evaluation when --eval-data is not given.")
    prompts: str = setting(help='Prompts: JSONL of {"prompt": str | [messages]}, or .txt with one prompt per line.')
    reward: str = setting(help="What scores completions: rm:DIR (a reward model), judge:sentiment or judge:readability.")
    iterations: int = setting(100, help="PPO iterations (rollout + update).")
    rollout_batch: int = setting(16, help="Prompts sampled per iteration, one completion each.")
    ppo_epochs: int = setting(4, help="Passes over each rollout.")
    max_new_tokens: int = setting(48, help="Longest completion; a completion cut here has no EOS.")
    temperature: float = setting(1.0, help="Sampling temperature; the log-probs of ratio and KL use the same one.")
    top_k: int = setting(0, help="Top-k sampling (0: off). Biases the KL estimate; a warning says so.")
    top_p: float = setting(1.0, help="Nucleus sampling (1: off). Biases the KL estimate; a warning says so.")
    kl_coef: float = setting(0.05, help="KL penalty coefficient (the initial value with --target-kl).")
    target_kl: float = setting(0.0, help="Adaptive KL controller target, in nats per completion (0: fixed --kl-coef).")
    kl_horizon: float = setting(10000.0, help="Adaptive controller horizon, in completions (Ziegler et al. 2019).")
    kl_estimator: str = setting("k1", help="Per-token KL estimator in the penalty: k1 (log-ratio) or k3 (unbiased, >= 0).")
    gamma: float = setting(1.0, help="GAE discount.")
    lam: float = setting(0.95, help="GAE lambda.")
    clip_range: float = setting(0.2, help="PPO ratio clip.")
    clip_range_value: float = setting(0.2, help="Value clip around the rollout-time value.")
    vf_coef: float = setting(0.1, help="Weight of the value loss in the total loss.")
    max_approx_kl: float = setting(0.0, help="Stop an iteration's PPO epochs once a minibatch's policy/approxkl_avg exceeds this (0: never).")
    value: str = setting("separate", help="Value model: separate (scalar-head model; from the reward model with rm:DIR, else the policy's weights) or shared (a head on the policy trunk).")
    missing_eos_penalty: float = setting(0.0, help="Subtracted from the score of a completion that hit --max-new-tokens without EOS.")
    score_clip: float = setting(0.0, help="Clip scores to [-c, c] (0: no clip).")
    normalize_scores: bool = setting(False, help="Whiten each rollout's scores (mean 0, std 1) before the KL penalty.")


@dataclass
class BoNConfig:
    """`preftune bon`: best-of-n sampling; keep the best of n completions per prompt."""

    model: str = setting(help="Policy to sample from: local folder, hub name, or alias (smollm2-135m, tiny).")
    reward: str = setting(help="What picks the best: rm:DIR, judge:sentiment or judge:readability.")
    prompts: str = setting(help='Prompts: JSONL of {"prompt": str | [messages]}, or .txt with one prompt per line.')
    out: str = setting(help="JSONL to write: prompt, best response, its score and all n scores per line.")
    n: int = setting(16, help="Completions sampled per prompt.")
    gold: str | None = setting(None, help="Optional second judge that scores the kept completion (e.g. judge:sentiment when --reward is rm:DIR).")
    max_new_tokens: int = setting(48, help="Longest completion.")
    temperature: float = setting(1.0, help="Sampling temperature; the KL figure is relative to this sampling distribution.")
    top_k: int = setting(0, help="Top-k sampling (0: off).")
    top_p: float = setting(1.0, help="Nucleus sampling (1: off).")
    seed: int = setting(0, help="Sampling seed.")
    batch_size: int = setting(16, help="Sequences per generate call.")
    max_prompt_length: int = setting(512, help="Max prompt tokens (the oldest turns go first).")
    device: str = setting("auto", help="auto, cpu or cuda.")
