#!/usr/bin/env bash
# The GPU check of issues 9 and 20, on a machine with CUDA GPUs, in under 8 minutes:
#   1. DPO throughput, preftune against TRL 1.16 at TRL's best setting on a GPU (bench/dpo_throughput.py
#      --ours fast:off:bf16 --trl bf16: bf16 autocast over fp32 weights on both sides, no
#      checkpointing), for SmolLM2-135M's architecture and a ~1.07B Llama (hidden 2048, 16 layers,
#      GQA 32/8 heads, SmolLM2's 49,152-token vocabulary), both with random weights: throughput does
#      not depend on the weights, and the GPU machine cannot download any;
#   2. smoke runs of `preftune dpo` on the 135M model (precision auto: bf16 on CUDA, printed): one
#      process, then two processes under torchrun with DDP and with FSDP2, over NCCL where there are
#      two GPUs or more (one rank per GPU), else gloo sharing the one GPU (NCCL refuses two ranks on
#      one GPU); with one GPU, a one-process torchrun over NCCL checks that backend's setup;
#   3. the vLLM rollout path (`--rollout-engine vllm`), where the machine has vllm installed (it
#      cannot be carried: its wheel alone is far over the 64 MiB a device call takes);
# and prints one table. Each step has its own time limit, all of them together $GPU_CHECK_BUDGET
# seconds (450), and a failure becomes a row of the table. (Run order: 135M bench, smoke, NCCL,
# vLLM, 1B bench.)
#
#   bench/gpu_check.sh prepare   # here, with the network: wheels and SmolLM2's tokenizer -> .gpu-check/
#   bench/gpu_check.sh           # on the GPU machine, with .gpu-check/ carried along
#                                # (the device tool: carry [".gpu-check"], timeout_s 600)
#
# The GPU machine has python3 with CUDA PyTorch, transformers and accelerate but no network: the
# prepare step fetches what it lacks (TRL, datasets and their small dependencies, and the
# transformers version preftune is tested with) as wheels. preftune runs from src/ (PYTHONPATH).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ASSETS=${GPU_CHECK_ASSETS:-$REPO/.gpu-check}

if [[ "${1:-}" == "prepare" ]]; then
    set -e
    PY=${PYTHON:-$REPO/.venv/bin/python}
    mkdir -p "$ASSETS/wheels" "$ASSETS/smollm2"
    # Versions from this checkout's environment (the ones the tests ran with); Python 3.12 wheels.
    read -r -a PINS < <("$PY" -c 'import importlib.metadata as m
print(" ".join(f"{p}=={m.version(p)}" for p in ("trl", "datasets", "dill", "multiprocess", "transformers")))')
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --dest "$ASSETS/wheels" "${PINS[@]}"
    # SmolLM2-135M-Instruct's tokenizer and config (not its 517 MB of weights).
    FOLDER=$("$PY" -c 'from preftune.models.smollm2 import ensure_smollm2; print(ensure_smollm2())')
    for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
        cp "$FOLDER/$f" "$ASSETS/smollm2/"
    done
    du -sh "$ASSETS"
    echo "prepared $ASSETS: carry it to the GPU machine (it is git-ignored), then run bench/gpu_check.sh there"
    exit 0
fi

PY=${PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
RESULTS=$WORK/results
mkdir -p "$RESULTS"
export PYTHONPATH="$REPO/src:$REPO/bench${PYTHONPATH:+:$PYTHONPATH}"
export PREFTUNE_CACHE=$WORK/cache HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=4
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-450}  # seconds for all steps; the table and the setup fit in the rest of 8 min
cd "$REPO"

note() { echo "[gpu_check $(($(date +%s) - START))s] $*" >&2; }

# step NAME SECONDS COMMAND...: run with a time limit (cut to what is left of $BUDGET), log to
# $RESULTS/NAME.log, record the status (124: over its limit; 125: skipped, no time left).
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((START + BUDGET - $(date +%s)))
    if ((left < 20)); then
        note "$name skipped: the time budget is spent"
        echo '{"status": 125, "seconds": 0}' >"$RESULTS/$name.status.json"
        return 0
    fi
    ((limit > left)) && limit=$left
    note "$name (limit ${limit}s)"
    local began=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    local status=$?
    echo "{\"status\": $status, \"seconds\": $(($(date +%s) - began))}" >"$RESULTS/$name.status.json"
    if [[ $status -ne 0 ]]; then
        note "$name failed (exit $status; 124: over its time limit); last lines:"
        tail -5 "$RESULTS/$name.log" >&2
    fi
    return 0
}

"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print(torch.__version__, torch.cuda.get_device_name())' \
    || { echo "gpu_check: needs a CUDA GPU and python3 with CUDA PyTorch" >&2; exit 2; }
if compgen -G "$ASSETS/wheels/*.whl" >/dev/null; then
    note "installing $(ls "$ASSETS"/wheels/*.whl | wc -l) carried wheels"
    "$PY" -m pip install --quiet --no-index --no-deps "$ASSETS"/wheels/*.whl || note "wheel install failed"
else
    note "no wheels in $ASSETS/wheels (run 'bench/gpu_check.sh prepare' where there is a network)"
fi

# -- models: random weights in SmolLM2-135M's and a ~1B Llama's shape, with SmolLM2's tokenizer ------
step models 90 "$PY" - "$ASSETS/smollm2" "$WORK/models" <<'EOF'
import sys, torch
from pathlib import Path
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
source, out = Path(sys.argv[1]), Path(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(source)
shapes = {
    "smollm2-135m-random": {},
    # ~1.07B parameters: Llama 3.2 1B's shape with SmolLM2's vocabulary (tied embeddings).
    "llama-1b-random": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                            num_attention_heads=32, num_key_value_heads=8, head_dim=64),
}
for name, shape in shapes.items():
    config = LlamaConfig.from_pretrained(source, **shape)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).float()
    model.save_pretrained(out / name)
    tokenizer.save_pretrained(out / name)
    print(name, sum(p.numel() for p in model.parameters()), "parameters")
EOF

# -- 1. DPO throughput against TRL -------------------------------------------------------------------
BENCH=(bench/dpo_throughput.py --device cuda --precision bf16 --datasets hh --batch-size 8 --max-length 512
       --ours fast:off:bf16 --trl bf16)
step bench-135m 150 "$PY" "${BENCH[@]}" --model "$WORK/models/smollm2-135m-random" --pairs 256 --json "$RESULTS/bench-135m.json"

# -- 2. smoke: one process, then DDP and FSDP2 with two processes on the one GPU --------------------
step smoke-data 30 "$PY" -c "from dpo_throughput import hh_style_pairs; from preftune.data.schema import write_jsonl; write_jsonl(hh_style_pairs(64), '$WORK/smoke.jsonl')"
SMOKE=(dpo --model "$WORK/models/smollm2-135m-random" --data "$WORK/smoke.jsonl" --device cuda --batch-size 8
       --max-steps 8 --lr 1e-5 --max-length 512 --max-prompt-length 384 --save-every 4 --dist-timeout 120)
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc-per-node 2)
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
DIST_BACKEND=$([[ $GPUS -ge 2 ]] && echo nccl || echo gloo)
echo "$DIST_BACKEND" >"$RESULTS/dist-backend.txt"
note "$GPUS GPU(s): DDP and FSDP2 smoke runs over $DIST_BACKEND"
step smoke-single 60 "$PY" -m preftune "${SMOKE[@]}" --out "$WORK/smoke-single"
step smoke-ddp 75 "${TORCHRUN[@]}" -m preftune "${SMOKE[@]}" --dist-backend "$DIST_BACKEND" --out "$WORK/smoke-ddp"
step smoke-fsdp 75 "${TORCHRUN[@]}" -m preftune "${SMOKE[@]}" --dist-backend "$DIST_BACKEND" --fsdp --out "$WORK/smoke-fsdp"
if [[ $DIST_BACKEND == gloo ]]; then  # one GPU: NCCL's setup and collectives with one rank
    step smoke-nccl1 60 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m preftune "${SMOKE[@]}" \
        --dist-backend nccl --out "$WORK/smoke-nccl1"
fi

# -- 3. the vLLM rollout path, where vllm is installed ---------------------------------------------------
if "$PY" -c 'import vllm' >/dev/null 2>&1; then
    # The vLLM backend's test: log-probs against the trainer's, before and after a weight push.
    step vllm 120 env PREFTUNE_VLLM_PYTHON="$(command -v "$PY")" "$PY" -m pytest -q -m slow -p no:cacheprovider \
        tests/rollout/test_vllm_backend.py
else
    note "vllm skipped: not installed on this machine"
    echo '{"status": "not installed", "seconds": 0}' >"$RESULTS/vllm.status.json"
fi

# -- 4. DPO throughput against TRL, ~1B (last: what is left of the budget) ------------------------------
step bench-1b 200 "$PY" "${BENCH[@]}" --model "$WORK/models/llama-1b-random" --pairs 128 --json "$RESULTS/bench-1b.json"

# -- the table -----------------------------------------------------------------------------------------
"$PY" - "$RESULTS" "$WORK" "$(($(date +%s) - START))" <<'EOF'
import json, sys
from pathlib import Path
results, work, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def status(name):
    path = results / f"{name}.status.json"
    return json.loads(path.read_text()) if path.exists() else {"status": "not run", "seconds": 0}

def last_error(name):
    path = results / f"{name}.log"
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no log"])[-1].strip()[:90]

def metrics(run):
    path = work / run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

print(f"\ngpu_check: {elapsed} s in all; logs in {results}")
print(f"{'check':34} {'result':>8} {'pairs/s':>9} {'tokens/s':>10} {'MFU':>6} {'GPU GB':>7} {'step-1 loss':>12} {'note'}")
print("-" * 110)
for name, label in (("bench-135m", "SmolLM2-135M shape"), ("bench-1b", "Llama ~1B")):
    state = status(name)
    summary = json.loads((results / f"{name}.json").read_text()) if (results / f"{name}.json").exists() else None
    if summary is None:
        print(f"{'DPO ' + label:34} {'FAILED':>8} {'':>9} {'':>10} {'':>6} {'':>7} {'':>12} exit {state['status']}: {last_error(name)}")
        continue
    for row in summary["rows"]:
        who = "preftune" if row["kind"].startswith("ours") else "TRL"
        if "failed" in row:
            print(f"{'DPO ' + label + ', ' + who:34} {'FAILED':>8} {'':>9} {'':>10} {'':>6} {'':>7} {'':>12} {row['failed']}")
            continue
        print(f"{'DPO ' + label + ', ' + who:34} {'ok':>8} {row['pairs_per_s']:9.2f} {row['tokens_per_s']:10.0f} "
              f"{100 * row['mfu']:5.1f}% {row.get('peak_gpu_gb', float('nan')):7.2f} {row['step1_loss']:12.6f} "
              f"{row['seconds']:.1f} s/pass")
    for ratio in summary["ratios"]:
        print(f"{'  preftune / TRL':34} {ratio['speedup_pairs']:7.2f}x pairs/s; |step-1 loss difference| {ratio['step1_loss_diff']:.1e}")
    peaks = summary["matmul_peak_gflops"]  # one rate per precision
    print(f"{'':34} (matmul peak measured: " + ", ".join(f"{p} {r / 1000:.0f} TFLOP/s" for p, r in peaks.items()) + ")")
vllm = status("vllm")
print(f"{'vLLM rollout path':34} {('ok' if vllm['status'] == 0 else 'FAILED') if isinstance(vllm['status'], int) else 'skipped':>8} "
      f"{'':>9} {'':>10} {'':>6} {'':>7} {'':>12} {vllm['status'] if not isinstance(vllm['status'], int) else last_error('vllm')}")
single = {r["step"]: r["loss"] for r in metrics("smoke-single") if "loss" in r}
backend = (results / "dist-backend.txt").read_text().strip() if (results / "dist-backend.txt").exists() else "?"
for name, label in (("smoke-single", "dpo, 1 process"), ("smoke-ddp", f"dpo, DDP 2 processes, {backend}"),
                    ("smoke-fsdp", f"dpo, FSDP2 2 processes, {backend}"), ("smoke-nccl1", "dpo, torchrun 1 process, nccl")):
    if name == "smoke-nccl1" and not (results / f"{name}.status.json").exists():
        continue
    state, rows = status(name), [r for r in metrics(name) if "loss" in r]
    ok = state["status"] == 0 and len(rows) == 8
    gap = max((abs(r["loss"] - single[r["step"]]) for r in rows if r["step"] in single), default=float("nan"))
    peak = max((r.get("memory/peak_gb", 0.0) for r in rows), default=float("nan"))
    note = f"{state['seconds']} s wall, {len(rows)} steps" + ("" if name == "smoke-single" else f", max |loss - 1 process| {gap:.1e}")
    if not ok:
        note += f"; exit {state['status']}: {last_error(name)}"
    print(f"{label:34} {'ok' if ok else 'FAILED':>8} {'':>9} {'':>10} {'':>6} {peak:7.2f} "
          f"{rows[0]['loss'] if rows else float('nan'):12.6f} {note}")
EOF
