"""Two processes on CPU (gloo), launched as users launch them (`torchrun -m preftune ...`):
DDP and FSDP2 follow the single-process trajectory, a checkpoint written by two processes resumes
in one, PPO logs the mean over ranks, and a dead or hung worker fails the run instead of hanging.

Each launch costs 10-20 s here (two fresh interpreters importing torch and transformers), so the
runs are shared by the tests through module-scoped fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from preftune.config import DPOConfig, resolve_config
from preftune.runlog import read_metrics
from preftune.train.dpo import train_dpo

WORLD = 2
STEPS = 10
TOPICS = ["the sky", "magnets", "plants", "rain", "the moon", "bread", "trains", "bees"]
# The single-process run and the two-process runs share these settings: batch 4 is the global
# batch, 2 pairs per rank under torchrun.
# fp32 explicitly: the torchrun workers are subprocesses, which the conftest's fp32 pin cannot reach.
DPO_SETTINGS = dict(model="tiny", batch_size=4, lr=1e-3, max_steps=STEPS, seed=0, save_every=5, keep_last=3,
                    precision="fp32")  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def env(workdir):
    """The launched processes' environment: one thread each, a private cache (reference log-probs)."""
    saved = os.environ.get("PREFTUNE_CACHE")
    os.environ["PREFTUNE_CACHE"] = str(workdir / "cache")  # the in-process runs share it
    yield os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if saved is None:
        os.environ.pop("PREFTUNE_CACHE", None)
    else:
        os.environ["PREFTUNE_CACHE"] = saved


@pytest.fixture(scope="module")
def pairs_file(workdir):
    rows = [{"prompt": f"Explain {TOPICS[i % 8]} to a five year old. ({i})",
             "chosen": f"Here is a simple, friendly answer about {TOPICS[i % 8]}!",
             "rejected": "The film was boring, too long and badly written."} for i in range(16)]  # fmt: skip
    path = workdir / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def flags(settings: dict) -> list[str]:
    out = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def torchrun(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def single_run(workdir, pairs_file, env):
    config = resolve_config(DPOConfig, None, DPO_SETTINGS | dict(data=str(pairs_file), out=str(workdir / "single")))
    return train_dpo(config, show_progress=False)


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def two_process_run(request, workdir, pairs_file, env):
    out = workdir / request.param
    settings = DPO_SETTINGS | dict(data=pairs_file, out=out) | ({"fsdp": True} if request.param == "fsdp" else {})
    torchrun(["-m", "preftune", "dpo", *flags(settings)], env)
    return request.param, out


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(out) if "loss" in r]


TOLERANCE = {"ddp": 1e-5, "fsdp": 1e-4}


def test_two_processes_follow_the_single_process_run(single_run, two_process_run):
    kind, out = two_process_run
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # rank 0 alone wrote the log
    assert losses(out) == pytest.approx(losses(single_run), abs=TOLERANCE[kind])
    single_rows = [r for r in read_metrics(single_run) if "loss" in r]
    # Token counts are summed over ranks, the rest averaged: the single-process figures.
    assert [r["num_tokens"] for r in rows] == [r["num_tokens"] for r in single_rows]
    for name in ("rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm"):
        assert [r[name] for r in rows] == pytest.approx([r[name] for r in single_rows], rel=1e-3, abs=1e-4)
    # The final model is a plain HF folder (gathered from the shards under FSDP) with the same weights.
    ours, reference = load_file(str(out / "final" / "model.safetensors")), load_file(str(single_run / "final" / "model.safetensors"))
    assert ours.keys() == reference.keys()
    for name, tensor in ours.items():
        assert torch.allclose(tensor, reference[name], atol=1e-4), name
    AutoModelForCausalLM.from_pretrained(out / "final")
    sharded = (out / "checkpoints" / "step-5" / "distributed").is_dir()
    assert sharded == (kind == "fsdp")  # FSDP writes torch.distributed.checkpoint shards, DDP one state file
    if sharded:
        assert sorted(p.name for p in (out / "checkpoints" / "step-5" / "distributed").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


def test_checkpoint_of_two_processes_resumes_in_one(workdir, pairs_file, single_run, two_process_run):
    kind, out = two_process_run
    resumed = workdir / f"{kind}-resumed"
    shutil.copytree(out, resumed)
    for later in ("step-10",):
        shutil.rmtree(resumed / "checkpoints" / later)
    settings = DPO_SETTINGS | dict(data=str(pairs_file), out=str(resumed), resume=True, fsdp=kind == "fsdp")
    train_dpo(resolve_config(DPOConfig, None, settings), show_progress=False)  # --fsdp: a no-op in one process
    rows = [r for r in read_metrics(resumed) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert losses(resumed)[5:] == pytest.approx(losses(out)[5:], abs=TOLERANCE[kind])
    assert losses(resumed)[5:] == pytest.approx(losses(single_run)[5:], abs=TOLERANCE[kind])


def test_ppo_on_two_processes_logs_the_mean_over_ranks(workdir, env):
    prompts = workdir / "prompts.txt"
    prompts.write_text("".join(f"Tell me about {topic}, please ({i}).\n" for i, topic in enumerate(TOPICS * 2)))
    out, record = workdir / "ppo", workdir / "ppo-record"
    record.mkdir()
    torchrun([str(Path(__file__).with_name("dist_worker.py")), str(out), str(prompts), str(record)], env)
    logged = [r for r in read_metrics(out) if "objective/kl" in r]
    assert [r["step"] for r in logged] == [1, 2]
    ranks = [[json.loads(line) for line in (record / f"rank{r}.jsonl").read_text().splitlines()] for r in range(WORLD)]
    scored = [[row for row in rows if "score" in row] for rows in ranks]
    # Final per-iteration metrics: the dicts with every PPO metric (the other reduce is the KL's).
    local = [[row["metrics"] for row in rows if "objective/entropy" in row.get("metrics", {})] for rows in ranks]
    per_rank = 8 // WORLD
    for iteration, row in enumerate(logged):
        # Each rank sampled and scored its own half of the global batch of 8 prompts.
        prompts_of = [{s["prompt"] for s in scores[iteration * per_rank : (iteration + 1) * per_rank]} for scores in scored]
        assert all(len(p) == per_rank for p in prompts_of) and not prompts_of[0] & prompts_of[1]
        all_scores = [s["score"] for scores in scored for s in scores[iteration * per_rank : (iteration + 1) * per_rank]]
        assert row["objective/scores"] == pytest.approx(sum(all_scores) / len(all_scores), abs=1e-6)
        for name in local[0][iteration]:
            mean = sum(metrics[iteration][name] for metrics in local) / WORLD
            assert row[name] == pytest.approx(mean, rel=1e-9, abs=1e-12), name
        assert row["kl_coef"] == local[0][iteration]["kl_coef"] == local[1][iteration]["kl_coef"]
    # The ranks really saw different rollouts (else "the mean" would prove nothing).
    assert any(local[0][i][name] != local[1][i][name] for i in range(2)
               for name in ("objective/scores", "objective/entropy", "completions/mean_length"))  # fmt: skip
    assert (out / "final" / "model.safetensors").exists()
    combined = [row["combined"] for rows in ranks for row in rows if "combined" in row]
    assert combined[0] == combined[1] == {"loss": 0.5, "num_tokens": 3, "min_reward": 10.0, "eval/max_reward": 11.0}
    assert isinstance(combined[0]["num_tokens"], int)


def test_in_one_process_the_helpers_change_nothing():
    """Without torchrun every helper is the identity, so single-process runs are what they were."""
    from preftune.losses.advantages import masked_whiten
    from preftune.train import distributed

    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    metrics = {"loss": 0.25, "num_tokens": 7}
    assert distributed.all_reduce_metrics(metrics) is metrics
    assert distributed.shard([3, 1, 2]) == [3, 1, 2]
    assert distributed.any_rank(False) is False and distributed.mean_over_ranks(1.5) == 1.5
    counts = torch.tensor(12.0)
    assert distributed.per_rank_share(counts) is counts
    values, mask = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)), torch.arange(15).view(3, 5) % 3 > 0
    assert torch.equal(distributed.masked_whiten(values, mask), masked_whiten(values, mask))
    assert distributed.memory_metrics(torch.device("cpu")) == {}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_dead_or_hung_worker_fails_the_run_with_a_clear_error(workdir, pairs_file, env, how):
    """Two plain processes (no torchrun agent to clean up after them): rank 1 is killed (SIGKILL)
    or frozen (SIGSTOP) mid-run; rank 0 must exit with one clear line, within the timeout."""
    out, timeout = workdir / f"dead-{how}", 15
    settings = dict(model="tiny", data=pairs_file, out=out, batch_size=4, max_steps=100_000, dist_timeout=timeout)
    port = free_port()
    workers = []
    try:
        for rank in range(WORLD):
            rank_env = env | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
            workers.append(subprocess.Popen([sys.executable, "-m", "preftune", "dpo", *flags(settings)], env=rank_env,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
        deadline = time.monotonic() + 180
        while len(read_metrics(out)) < 3:  # training is under way
            assert time.monotonic() < deadline and workers[0].poll() is None, workers[0].stderr.read()[-3000:]
            time.sleep(0.2)
        workers[1].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        stopped = time.monotonic()
        _, stderr = workers[0].communicate(timeout=timeout + 60)
        waited = time.monotonic() - stopped
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.communicate()
    assert workers[0].returncode == 1, stderr[-3000:]
    error = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "rank 0 of 2: a collective operation failed" in error[0], stderr[-3000:]
    assert f"--dist-timeout {timeout} s" in error[0]
    assert "Traceback" not in stderr
    assert waited < timeout + 30  # a hang would sit here until communicate() gave up


@pytest.mark.parametrize("command, settings", [
    ("grpo", dict(prompts_per_iteration=4, num_generations=2, batch_size=4, advantage="reinforce_pp", kl_in="reward")),
    ("online-dpo", dict(prompts_per_iteration=4, batch_size=2)),
])  # fmt: skip
def test_online_rl_commands_run_under_torchrun(workdir, env, command, settings):
    """grpo (with REINFORCE++'s all-ranks whitening) and online-dpo on two processes, launched as
    users launch them, with a python: reward importable from the working folder."""
    (workdir / "dist_online_rewards.py").write_text("def count_e(prompt, response):\n    return float(response.count('e'))\n")
    prompts = workdir / "online-prompts.txt"
    prompts.write_text("".join(f"Tell me about {topic}, please ({i}).\n" for i, topic in enumerate(TOPICS * 2)))
    out = workdir / command
    settings = dict(model="tiny", prompts=prompts, reward="python:dist_online_rewards:count_e", out=out, iterations=2,
                    max_new_tokens=8, lr=3e-3, seed=0, dist_timeout=120) | settings  # fmt: skip
    torchrun(["-m", "preftune", command, *flags(settings)], env | {"PYTHONPATH": os.pathsep.join([str(workdir), env.get("PYTHONPATH", "")])})
    rows = [r for r in read_metrics(out) if "learning_rate" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(r["grad_norm"] > 0 for r in rows)
    assert (out / "final" / "model.safetensors").exists()
