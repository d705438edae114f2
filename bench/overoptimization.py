"""Reward-model over-optimisation with best-of-n, after Gao, Schulman & Hilton 2022, at small scale.

    .venv/bin/python bench/overoptimization.py [--prompts 24] [--n 64] [--sizes 100,800]
        [--noise 0.2] [--threads 1] [--out runs/bench-overopt]

Policy: SmolLM2-135M-Instruct, asked to continue a movie review from its first 2-8 words (prefixes
of held-out sentences of ../shared/data/movie_review_snippets.tsv), --n samples per prompt at
temperature 1. Gold reward: VADER compound of the continuation (`judge:sentiment`). Proxy: a
reward model (`preftune rm`: SmolLM2 trunk, LoRA on the top blocks, scalar head) trained on a
limited number of pairs labelled by the gold reward (pairs whose gold scores differ by less than
--min-gap skipped), each label flipped with probability --noise.
The pairs are continuations of *other* corpus sentences (sentences 0..7999, after a 2-8-word
prefix), so the proxy is trained off-policy, as a reward model trained on earlier data is. The
larger training set contains the smaller one.

Best-of-n: for n = 1..N, the unbiased estimator `preftune.bon.expected_best_of_n` reads, from the
same N samples per prompt, the expected proxy and gold score of the sample the proxy ranks best
among n fresh ones. KL(best-of-n || policy) = log n - (n-1)/n (`losses.kl.best_of_n_kl`), and
d = sqrt(KL). Gao et al.'s functional form for best-of-n, gold(d) - gold(0) = d (alpha - beta d),
is fitted by least squares; the gold score peaks at d* = alpha / (2 beta) (KL* = d*^2) when
beta > 0. Intervals: percentile bootstrap over prompts (--bootstrap resamples).

Everything slow is cached under --out (the sample pool and each proxy's scores, per prompt; each
reward model): a rerun with the same settings only refits and redraws, and a rerun with more
--prompts samples and scores only the new ones. Writes results.json and overoptimization.svg.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import random
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
DATA = REPO.parent / "shared" / "data" / "movie_review_snippets.tsv"
INSTRUCTION = 'Continue this movie review in one or two sentences: "{prefix}'
TRAIN_SENTENCES = 8000  # sentences 0..7999 feed the proxy; the rest give the policy's prompts


def rm_prompt(prefix: str) -> list:
    """The reward model's view of a prompt: an empty system turn keeps SmolLM2's template from
    inserting its default system prompt, which would double the tokens of every row."""
    from preftune.data.schema import Message

    return [Message("system", ""), Message("user", INSTRUCTION.format(prefix=prefix))]


def read_sentences(path: Path) -> list[str]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            sys.exit(f"error: {path}:{number}: expected 3 tab-separated fields, got {len(fields)}")
        rows.append(fields[2].replace("''", '"').strip())
    return rows


def split_prefix(sentence: str, rng: random.Random) -> tuple[str, str] | None:
    """(first 2-8 words, the rest), or None when fewer than 3 words would be left."""
    words = sentence.split()
    k = rng.randint(2, 8)
    if len(words) < k + 3:
        return None
    return " ".join(words[:k]), " ".join(words[k:])


def policy_prompts(sentences: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    order = list(range(TRAIN_SENTENCES, len(sentences)))
    rng.shuffle(order)
    prefixes = []
    for index in order:
        split = split_prefix(sentences[index], rng)
        if split:
            prefixes.append(split[0])
        if len(prefixes) == count:
            break
    return prefixes


def proxy_pairs(sentences: list[str], size: int, noise: float, seed: int, gold, min_gap: float = 0.0) -> list:
    """`size` gold-labelled pairs of continuations, each label flipped w.p. `noise`. Pairs whose gold
    scores differ by less than `min_gap` are skipped (VADER scores many neutral texts exactly 0, and
    a gap of 0.02 is no preference a labeller would state)."""
    from preftune.data.schema import Message, PreferencePair

    rng = random.Random(seed)
    order = list(range(TRAIN_SENTENCES))
    rng.shuffle(order)
    pairs = []
    for a, b in zip(order[0::2], order[1::2], strict=False):
        k = rng.randint(2, 8)
        words_a, words_b = sentences[a].split(), sentences[b].split()
        if len(words_a) < k + 3 or len(words_b) < k + 3:
            continue
        prefix, rest_a, rest_b = " ".join(words_a[:k]), " ".join(words_a[k:]), " ".join(words_b[k:])
        gold_a, gold_b = gold(None, rest_a), gold(None, rest_b)
        if abs(gold_a - gold_b) < max(min_gap, 1e-12):
            continue
        chosen, rejected = (rest_a, rest_b) if gold_a > gold_b else (rest_b, rest_a)
        flipped = rng.random() < noise
        if flipped:
            chosen, rejected = rejected, chosen
        pairs.append(PreferencePair(rm_prompt(prefix), Message("assistant", chosen),
                                    Message("assistant", rejected), source="movie_review_snippets+vader",
                                    meta={"flipped": flipped, "gold_gap": abs(gold_a - gold_b)}))  # fmt: skip
        if len(pairs) == size:
            return pairs
    sys.exit(
        f"error: only {len(pairs)} usable pairs in the first {TRAIN_SENTENCES} sentences, asked for {size}"
    )


def sample_pool(args, prefixes: list[str], out: Path) -> list[list[str]]:
    """N continuations per prompt, cached in pool.jsonl beside the settings that made it.

    The cache is per prompt: a run with more --prompts (the first ones are the same prefixes)
    samples only the new prompts and appends them, with seed --seed + (prompts already cached), so
    the first chunk is exactly what a from-scratch run draws and later chunks are fresh draws.
    """
    settings = {"model": args.model, "n": args.n, "max_new_tokens": args.max_new_tokens,
                "temperature": 1.0, "seed": args.seed, "instruction": INSTRUCTION}  # fmt: skip
    pool_path, meta_path, timing_path = out / "pool.jsonl", out / "pool.settings.json", out / "pool.timing.json"
    cached: dict[str, list[str]] = {}
    if pool_path.exists() and meta_path.exists():
        saved = json.loads(meta_path.read_text())
        if {k: v for k, v in saved.items() if k != "prompts"} == settings:
            from preftune.data.files import text_lines  # "\n" only: a completion may hold U+2028

            rows = (json.loads(line) for line in text_lines(pool_path, str(pool_path)))
            cached = {row["prompt"]: row["completions"] for row in rows}
        else:
            # Another model, n or seed: start over, and forget the proxies' scores of the old pool.
            for stale in (pool_path, timing_path, *out.glob("rm-*/pool-scores.json")):
                stale.unlink(missing_ok=True)
    missing = [p for p in prefixes if p not in cached]
    if not missing:
        print(f"pool: reusing {pool_path} ({len(cached)} prompts cached)", file=sys.stderr)
        return [cached[p] for p in prefixes]
    from preftune.data.schema import user_prompt
    from preftune.generate import generate_completions
    from preftune.models.load import load_policy

    print(f"pool: {len(cached)} prompts cached, sampling {len(missing)} more", file=sys.stderr)
    model, tokenizer = load_policy(args.model)
    started = time.perf_counter()
    result = generate_completions(
        model, tokenizer, [user_prompt(INSTRUCTION.format(prefix=p)) for p in missing], args.n,
        max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, seed=args.seed + len(cached),
        batch_size=args.generate_batch, show_progress=sys.stderr.isatty(),
    )  # fmt: skip
    print(
        f"pool: {result.new_tokens} tokens in {time.perf_counter() - started:.0f} s ({result.tokens_per_second:.1f}/s)",
        file=sys.stderr,
    )
    with pool_path.open("a", encoding="utf-8") as handle:
        for prefix, texts in zip(missing, result.texts, strict=True):
            handle.write(json.dumps({"prompt": prefix, "completions": texts}, ensure_ascii=False) + "\n")
            cached[prefix] = texts
    meta_path.write_text(json.dumps(settings | {"prompts": list(cached)}))
    chunks = json.loads(timing_path.read_text())["chunks"] if timing_path.exists() else []
    chunks.append({"prompts": len(missing), "seconds": result.seconds, "tokens": result.new_tokens})
    timing_path.write_text(json.dumps({"seconds": sum(c["seconds"] for c in chunks),
                                       "tokens": sum(c["tokens"] for c in chunks), "chunks": chunks}))  # fmt: skip
    return [cached[p] for p in prefixes]


def train_proxy(args, pairs, size: int, out: Path) -> tuple[Path, float]:
    """Train (or reuse) the reward model on `pairs`; returns (its final/ folder, seconds spent)."""
    from preftune.config import RMConfig, resolve_config
    from preftune.data.schema import write_jsonl
    from preftune.train.reward import train_reward_model

    folder = out / f"rm-{size}"
    data = out / f"proxy-pairs-{size}.jsonl"
    write_jsonl(pairs, data)
    settings = dict(model=args.model, data=str(data), out=str(folder), lora=True, lora_r=16, lora_alpha=32,
                    lora_top_layers=args.lora_top_layers, lr=args.lr, batch_size=8, epochs=args.epochs,
                    max_length=args.max_length, max_prompt_length=64, warmup_ratio=0.1, log_every=5, seed=args.seed)  # fmt: skip
    marker = folder / "bench-settings.json"
    import hashlib

    # The pairs' content is part of the key: --noise or --min-gap change it under the same path.
    key = settings | {"pairs_sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    if (folder / "final").exists() and marker.exists() and json.loads(marker.read_text()) == key:
        print(f"proxy {size}: reusing {folder / 'final'}", file=sys.stderr)
        return folder / "final", json.loads((folder / "bench-timing.json").read_text())["seconds"]
    flags = [
        f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')} {v}"
        for k, v in settings.items()
    ]
    print(f"proxy {size}: preftune rm {' '.join(flags)}", file=sys.stderr)
    (folder / "pool-scores.json").unlink(missing_ok=True)  # scores of an older proxy
    started = time.perf_counter()
    train_reward_model(resolve_config(RMConfig, None, settings), show_progress=sys.stderr.isatty())
    seconds = time.perf_counter() - started
    marker.write_text(json.dumps(key))
    (folder / "bench-timing.json").write_text(json.dumps({"seconds": seconds}))
    return folder / "final", seconds


def score_pool(folder: Path, prefixes: list[str], pool: list[list[str]], args) -> list[list[float]]:
    """The proxy's score of every pooled completion, cached per prompt (as the pool is)."""
    cache = folder.parent / "pool-scores.json"
    scores: dict[str, list[float]] = {}
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved["key"]["n"] == args.n:
            scores = saved["scores"]
    todo = [i for i, p in enumerate(prefixes) if p not in scores]
    if todo:
        import torch

        from preftune.judges.registry import get_judge, score_batch
        from preftune.precision import autocast, choose_precision

        judge = get_judge(f"rm:{folder}", batch_size=32, max_length=args.max_length, max_prompt_length=64)
        prompts = [rm_prompt(prefixes[i]) for i in todo for _ in pool[i]]
        # The trainer's own precision choice (bf16 autocast where the CPU has bf16 units): at N = 1,024
        # scoring is tens of thousands of forward passes.
        precision, _ = choose_precision(torch.device("cpu"))
        started = time.perf_counter()
        with torch.inference_mode(), autocast(torch.device("cpu"), precision):
            flat = score_batch(judge, prompts, [t for i in todo for t in pool[i]])
        print(
            f"scored {len(flat)} completions of {len(todo)} prompts with {folder} in "
            f"{time.perf_counter() - started:.0f} s ({precision})",
            file=sys.stderr,
        )
        for k, i in enumerate(todo):
            scores[prefixes[i]] = flat[k * args.n : (k + 1) * args.n]
        cache.write_text(json.dumps({"key": {"n": args.n}, "scores": scores}))
    return [scores[p] for p in prefixes]


def bon_curves(proxy: list[list[float]], gold: list[list[float]], ns: list[int]):
    """Per prompt and n: (expected proxy, expected gold) of the proxy's best of n."""
    from preftune.bon import expected_best_of_n

    return [
        [(expected_best_of_n(p, n), expected_best_of_n(p, n, g)) for n in ns]
        for p, g in zip(proxy, gold, strict=True)
    ]


def fit_gao(d: list[float], y: list[float]) -> dict:
    """Least squares for y = d (alpha - beta d) (no intercept: y(0) = 0 by construction), and R^2."""
    import numpy as np

    x = np.stack([np.asarray(d), -(np.asarray(d) ** 2)], axis=1)
    target = np.asarray(y)
    (alpha, beta), *_ = np.linalg.lstsq(x, target, rcond=None)
    residual = target - x @ np.array([alpha, beta])
    total = ((target - target.mean()) ** 2).sum()
    r2 = 1 - (residual**2).sum() / total if total > 0 else float("nan")
    turnover = alpha / (2 * beta) if beta > 0 else math.inf
    return {"alpha": float(alpha), "beta": float(beta), "r2": float(r2), "d_star": float(turnover),
            "kl_star": float(turnover**2) if math.isfinite(turnover) else math.inf}  # fmt: skip


def summarize(per_prompt, ns, bootstrap: int, seed: int) -> dict:
    """Mean curves relative to n = 1, the fits, and bootstrap intervals over prompts."""
    import numpy as np

    from preftune.losses.kl import best_of_n_kl

    d = [math.sqrt(best_of_n_kl(n)) for n in ns]
    array = np.asarray(per_prompt)  # [prompts, ns, 2]

    def fit_of(rows):
        mean = array[rows].mean(axis=0)
        proxy, gold = mean[:, 0] - mean[0, 0], mean[:, 1] - mean[0, 1]
        return proxy, gold, fit_gao(d, gold.tolist()), fit_gao(d, proxy.tolist())

    def gold_of(rows, at):
        mean = array[rows].mean(axis=0)[:, 1]
        return float(mean[at] - mean[-1])

    proxy, gold, gold_fit, proxy_fit = fit_of(np.arange(len(array)))
    rng = np.random.default_rng(seed)
    draws = [fit_of(rng.integers(0, len(array), len(array))) for _ in range(bootstrap)]

    def interval(name):
        values = np.array([draw[2][name] for draw in draws], dtype=float)
        values = values[np.isfinite(values)]
        finite = len(values) / max(len(draws), 1)
        if not len(values):
            return None, finite
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))], finite

    for name in ("alpha", "beta", "d_star"):
        gold_fit[f"{name}_ci95"], share = interval(name)
    gold_fit["bootstrap_share_turning_over"] = (
        float(np.mean([draw[2]["beta"] > 0 for draw in draws])) if draws else None
    )
    peak = int(np.argmax(gold))
    # A turnover without the fitted form: how far the gold falls from its peak (the n where the
    # full sample peaks) to the largest n, with a bootstrap interval over prompts. An interval
    # above 0 says the gold really turned down; the fit's beta > 0 says the same through the form.
    drops = [
        gold_of(rows, peak) for rows in (rng.integers(0, len(array), len(array)) for _ in range(bootstrap))
    ]
    drop = {"n_peak": ns[peak], "drop": gold_of(np.arange(len(array)), peak),
            "ci95": [float(np.percentile(drops, 2.5)), float(np.percentile(drops, 97.5))] if drops else None}  # fmt: skip
    return {"n": ns, "kl": [x * x for x in d], "d": d, "proxy_rel": proxy.tolist(), "gold_rel": gold.tolist(),
            "gold_at_n1": float(array[:, 0, 1].mean()), "proxy_at_n1": float(array[:, 0, 0].mean()),
            "gold_fit": gold_fit, "proxy_fit": proxy_fit, "empirical_gold_peak": {"n": ns[peak], "d": d[peak], "gold_rel": float(gold[peak])},
            "gold_drop_after_peak": drop}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=24, help="policy prompts (held-out prefixes)")
    parser.add_argument("--n", type=int, default=64, help="samples per prompt (best-of-n up to this)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--generate-batch", type=int, default=64)
    parser.add_argument(
        "--sizes", default="100,800", help="proxy training-set sizes (pairs), comma-separated"
    )
    parser.add_argument("--noise", type=float, default=0.2, help="probability of flipping each proxy label")
    parser.add_argument(
        "--min-gap", type=float, default=0.3, help="skip proxy pairs whose gold scores differ by less"
    )
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-top-layers", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=112)
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest when the 2 cores are shared)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-overopt"))
    args = parser.parse_args()

    import torch

    from preftune.judges.registry import get_judge

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sentences = read_sentences(Path(args.data))
    gold = get_judge("judge:sentiment")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    grid = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
    ns = sorted({n for n in grid if n <= args.n} | {args.n})

    prefixes = policy_prompts(sentences, args.prompts, args.seed)
    pool = sample_pool(args, prefixes, out)
    pool_seconds = (
        json.loads((out / "pool.timing.json").read_text())["seconds"]
        if (out / "pool.timing.json").exists()
        else None
    )
    gold_scores = [[gold(None, t) for t in texts] for texts in pool]
    all_pairs = proxy_pairs(sentences, max(sizes), args.noise, args.seed + 1, gold, args.min_gap)

    results = {
        "command": "python " + shlex.join(["bench/overoptimization.py", *sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {args.threads} torch thread(s), {platform.processor() or 'cpu'}",
        "settings": vars(args) | {"ns": ns},
        "pool": {"prompts": len(prefixes), "samples_per_prompt": args.n, "generate_seconds": pool_seconds,
                 "gold_mean": sum(map(sum, gold_scores)) / (len(pool) * args.n),
                 "gold_zero_fraction": sum(s == 0 for row in gold_scores for s in row) / (len(pool) * args.n),
                 "examples": [{"prompt": prefixes[i], "completion": pool[i][0], "gold": gold_scores[i][0]} for i in range(min(3, len(pool)))]},
        "oracle": summarize(bon_curves(gold_scores, gold_scores, ns), ns, 0, args.seed),
        "proxies": {},
    }  # fmt: skip
    for size in sizes:
        folder, train_seconds = train_proxy(args, all_pairs[:size], size, out)
        proxy_scores = score_pool(folder, prefixes, pool, args)
        flat_proxy = [s for row in proxy_scores for s in row]
        flat_gold = [s for row in gold_scores for s in row]
        from preftune.eval.lengths import pearson, spearman

        entry = summarize(bon_curves(proxy_scores, gold_scores, ns), ns, args.bootstrap, args.seed)
        entry |= {"pairs": size, "flipped": sum(p.meta["flipped"] for p in all_pairs[:size]), "train_seconds": train_seconds,
                  "proxy_gold_pearson": pearson(flat_proxy, flat_gold), "proxy_gold_spearman": spearman(flat_proxy, flat_gold),
                  "proxy_length_pearson": pearson(flat_proxy, [len(t) for texts in pool for t in texts])}  # fmt: skip
        results["proxies"][str(size)] = entry
    results["total_seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    draw(results, out / "overoptimization.svg")
    print_table(results)


def draw(results: dict, path: Path) -> None:
    from svgplot import Panel, Series, render

    gold_panel = Panel(
        "gold (VADER) vs sqrt(KL), relative to n = 1", "d = sqrt(KL) [sqrt(nats)]", "gold reward gain"
    )
    proxy_panel = Panel("proxy (reward model) vs sqrt(KL)", "d = sqrt(KL) [sqrt(nats)]", "proxy reward gain")
    oracle = results["oracle"]
    gold_panel.series.append(
        Series("best-of-n by gold itself (oracle)", oracle["d"], oracle["gold_rel"], "dashed", "#7f7f7f")
    )
    for number, (size, entry) in enumerate(results["proxies"].items()):
        color = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"][number % 4]
        fit = entry["gold_fit"]
        fine = [entry["d"][-1] * i / 60 for i in range(61)]
        gold_panel.series.append(
            Series(f"proxy from {size} pairs", entry["d"], entry["gold_rel"], "marker", color)
        )
        gold_panel.series.append(Series(f"fit d({fit['alpha']:.3f} {-fit['beta']:+.3f} d), R2 {fit['r2']:.2f}", fine,
                                        [x * (fit["alpha"] - fit["beta"] * x) for x in fine], "line", color))  # fmt: skip
        proxy_panel.series.append(
            Series(f"proxy from {size} pairs", entry["d"], entry["proxy_rel"], "line+marker", color)
        )
    path.write_text(render([gold_panel, proxy_panel]), encoding="utf-8")


def drop_cell(entry: dict) -> str:
    drop = entry["gold_drop_after_peak"]
    interval = f" [{drop['ci95'][0]:.3f}, {drop['ci95'][1]:.3f}]" if drop["ci95"] else ""
    return f"{drop['drop']:.3f}{interval} (peak n={drop['n_peak']})"


def print_table(results: dict) -> None:
    print(
        f"| proxy pairs | proxy-gold r (pool) | alpha [95% CI] | beta [95% CI] | R2 | turnover d* (KL*) | gold gain at n={results['oracle']['n'][-1]} | empirical gold peak | drop from peak to n={results['oracle']['n'][-1]} [95% CI] |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size, entry in results["proxies"].items():
        fit = entry["gold_fit"]

        def ci(name, fit=fit):
            interval = fit.get(f"{name}_ci95")
            return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "-"

        turnover = (
            f"{fit['d_star']:.2f} ({fit['kl_star']:.2f} nats)"
            if math.isfinite(fit["d_star"])
            else "none (beta <= 0)"
        )
        peak = entry["empirical_gold_peak"]
        r = entry["proxy_gold_pearson"]
        print(f"| {size} | {'-' if r is None else f'{r:.2f}'} | {fit['alpha']:.3f} {ci('alpha')} | {fit['beta']:.3f} {ci('beta')} | "
              f"{fit['r2']:.2f} | {turnover} | {entry['gold_rel'][-1]:+.3f} | n={peak['n']} (d={peak['d']:.2f}, {peak['gold_rel']:+.3f}) | {drop_cell(entry)} |")  # fmt: skip
    oracle = results["oracle"]
    print(f"| oracle (gold picks) | 1.00 | {oracle['gold_fit']['alpha']:.3f} | {oracle['gold_fit']['beta']:.3f} | "
          f"{oracle['gold_fit']['r2']:.2f} | - | {oracle['gold_rel'][-1]:+.3f} | - | - |")  # fmt: skip
    print(
        f"\ngold at n=1 (the policy): {results['oracle']['gold_at_n1']:.3f}; total {results['total_seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
