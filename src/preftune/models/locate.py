"""Where a model name points, decided before anything heavy loads: a run folder (its final/), a
local path that is missing (said at once, with the closest name beside it), or a hub name that is
neither cached nor reachable (said in one line, instead of a minute of retries and warnings)."""

from __future__ import annotations

from pathlib import Path


def run_final_folder(path: Path) -> Path:
    """A run folder (the --out of sft, dpo, rm or ppo) stands for its `final/` model; any other
    path comes back as it is. So `--model runs/dpo`, `--ref` and `--rm` take a run folder."""
    is_model = any((path / name).exists() for name in ("config.json", "adapter_config.json", "preftune_scalar.json"))
    if path.is_dir() and not is_model and (path / "final").is_dir() and (path / "config.yaml").is_file():
        return path / "final"
    return path


def looks_local(name: str) -> bool:
    """A name meant as a path, not "org/model": it starts like a path, or its first part is a
    folder here (`runs/dpo_sigmod` when runs/ exists), or it ends like a weights file."""
    first = Path(name).parts[0] if Path(name).parts else ""
    return (
        name.startswith((".", "/", "~"))
        or ("/" in name and Path(first).is_dir())
        or name.lower().endswith((".gguf", ".safetensors", ".bin", ".pt", ".jsonl", ".json"))
    )


def close_match(path: Path) -> str:
    """"; did you mean runs/dpo_sigmoid?" when a name beside the missing one is close, else ""."""
    import difflib

    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return f" (nor is its folder {parent})"
    names = [p.name for p in parent.iterdir() if not p.name.startswith(".")]
    match = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    return f"; did you mean {parent / match[0]}?" if match else ""


def hub_problem(name: str) -> str | None:
    """Why a hub model cannot be loaded, found with one quick request (None: go ahead). Offline
    mode and cached copies are left to transformers, which then reports in one go."""
    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
        return None
    try:
        huggingface_hub.HfApi().model_info(name, timeout=10)
    except huggingface_hub.errors.RepositoryNotFoundError:
        return "not a local path, and the Hugging Face hub has no such model"
    except huggingface_hub.errors.HfHubHTTPError:
        return None  # reachable (gated, rate-limited...): let from_pretrained say what it says
    except Exception as exc:  # DNS, connection, timeout: the hub cannot be reached from here
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"not a local path, not in the local cache, and the Hugging Face hub is unreachable ({first_line})"
    return None
