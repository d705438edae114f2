"""`preftune demo` over seeds, with settings varied: is a change to the demo better than the noise?

    python bench/demo_seeds.py [--quick] [--seeds 0,1] [--variant NAME:FIELD=VALUE,...] [--out DIR]

One demo run gives a kid-judge win rate whose 95% CI spans about +-18 points on --quick's 24
held-out prompts, so one run cannot tell two settings apart. This runs the whole demo (the
product's `run_demo`, same stages and files) once per seed and variant and prints one table: the
reward model's held-out accuracy, DPO's win rate against the base model with its CI, KL, seconds.

A variant changes fields of the demo's size (`preftune.demo.DemoSize`), e.g.
`--variant all-pairs:dpo_all_pairs=true,dpo_epochs=1`. The variant "shipped" (no changes) always
runs. Finished runs are cached in --out/results.json, so more seeds only run the new ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
import typing
from pathlib import Path


def parse_variant(text: str) -> tuple[str, dict]:
    """'NAME:FIELD=VALUE,...' -> (NAME, {FIELD: value of the field's type})."""
    from preftune.demo import DemoSize

    name, _, assignments = text.partition(":")
    types = typing.get_type_hints(DemoSize)
    changes = {}
    for assignment in filter(None, assignments.split(",")):
        field, _, value = assignment.partition("=")
        if field not in types:
            raise SystemExit(f"--variant {text}: DemoSize has no field {field!r} (fields: {', '.join(types)})")
        kind = types[field]
        changes[field] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return name, changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="vary the --quick demo (default: the full one)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated demo seeds")
    parser.add_argument("--variant", action="append", default=[], help="NAME:FIELD=VALUE,... (repeatable)")
    parser.add_argument("--out", default="/tmp/preftune-demo-seeds")
    args = parser.parse_args()

    from preftune.demo import FULL, QUICK, run_demo

    base = QUICK if args.quick else FULL
    variants = dict([("shipped", {})] + [parse_variant(v) for v in args.variant])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "results.json"
    results = json.loads(cache.read_text()) if cache.exists() else {}
    for name, changes in variants.items():
        for seed in (int(s) for s in args.seeds.split(",")):
            key = f"{'quick' if args.quick else 'full'}/{name}/{seed}"
            if key in results and results[key]["changes"] == changes:
                continue
            started = time.perf_counter()
            result = run_demo(out=str(out / key), quick=args.quick, seed=seed, size=dataclasses.replace(base, **changes))
            kid = result["judges"]["kid"]
            results[key] = {"variant": name, "seed": seed, "changes": changes, "win_rate": kid["win_rate"],
                            "ci95": kid["ci95"], "rm_accuracy": result["reward_model"]["held_out_accuracy"],
                            "kl": result["kl"]["mean"], "prompts": result["n_prompts"],
                            "seconds": round(time.perf_counter() - started)}  # fmt: skip
            cache.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{'quick' if args.quick else 'full'} demo, seeds {args.seeds}")
    print("| variant | seed | reward model held out | DPO win rate (95% CI) | KL | seconds |")
    print("|---|---|---|---|---|---|")
    for name, changes in variants.items():
        rows = [r for k, r in results.items() if r["variant"] == name and k.startswith("quick" if args.quick else "full")]
        for r in sorted(rows, key=lambda r: r["seed"]):
            low, high = r["ci95"]
            rm = "-" if r["rm_accuracy"] is None else f"{r['rm_accuracy']:.1%}"
            print(f"| {name} {changes or ''} | {r['seed']} | {rm} | {r['win_rate']:.1%} ({low:.1%}-{high:.1%}) | "
                  f"{r['kl']:.2f} | {r['seconds']} |")  # fmt: skip
        if len(rows) > 1:
            print(f"| {name} mean | {len(rows)} seeds | | {statistics.mean(r['win_rate'] for r in rows):.1%} | | |")


if __name__ == "__main__":
    main()
