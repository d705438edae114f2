"""Reward model on real human labels: movie-review sentences ranked by their mean human rating.

    .venv/bin/python bench/reward_model_movie.py [--model smollm2-135m] [--train-pairs 1200]
        [--lora-top-layers 8] [--threads 1] [--out runs/bench-rm-movie]

Data: ../shared/data/movie_review_snippets.tsv (Hutto & Gilbert 2014's sentence set from Pang &
Lee; tab-separated `id, mean human rating in -4..+4, sentence`, no header). Sentences 0..7999 are
the training pool, the last 2,000 the test pool; the two never meet.

Pairs, under one fixed prompt ("Write a sentence from a movie review."): each pool is shuffled
(seeded) and cut into consecutive couples; the sentence with the higher human rating is chosen;
couples whose ratings differ by less than --min-diff are near-ties and are skipped. Each test
sentence therefore sits in at most one test pair.

Steps: write the pairs as canonical JSONL -> `train_reward_model` (exactly `preftune rm`; the
equivalent command is printed) -> score every test sentence once with the `rm:DIR` judge and
with VADER (`judge:sentiment`) -> accuracy on the test pairs (strict: a tie counts as wrong).
A reward does not depend on the other sentence of its pair, so scoring sentences once is the same
as scoring pairs, at half the cost; it also gives the accuracy on *all* test couples with
|diff| >= --min-diff as a lower-variance second figure. Prints one table; writes results.json,
test_scores.jsonl (each scored test sentence: rating, reward, VADER), the train/test pairs and the
run folder under --out.

Flags: --data, --train-sentences 8000, --test-sentences 2000, --min-diff 0.5, --train-pairs
(cap on training pairs, 0 = all ~3,200), --model, --lora/--no-lora, --lora-r, --lora-alpha,
--lora-top-layers (0 = all blocks), --lr, --batch-size, --epochs, --max-length, --system-prompt
(the system turn; "" keeps the prompt short, `--system-prompt default` uses the template's own),
--threads (torch threads; 1 is fastest when the 2 cores are shared), --seed, --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "movie_review_snippets.tsv"
PROMPT = "Write a sentence from a movie review."


def read_sentences(path: Path) -> list[tuple[float, str]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            sys.exit(f"error: {path}:{number}: expected 3 tab-separated fields, got {len(fields)}")
        rows.append((float(fields[1]), fields[2].strip()))
    return rows


def make_couples(
    indices: list[int], ratings: list[float], min_diff: float, seed: int
) -> list[tuple[int, int]]:
    """(chosen, rejected) sentence indices: seeded shuffle, consecutive couples, near-ties skipped."""
    order = list(indices)
    random.Random(seed).shuffle(order)
    couples = []
    for a, b in zip(order[0::2], order[1::2], strict=False):
        if abs(ratings[a] - ratings[b]) < min_diff:
            continue
        couples.append((a, b) if ratings[a] > ratings[b] else (b, a))
    return couples


def accuracy(scores: dict[int, float], couples: list[tuple[int, int]]) -> tuple[float, float]:
    """(strict accuracy, tie fraction) of ranking chosen above rejected by `scores`."""
    wins = sum(scores[c] > scores[r] for c, r in couples)
    ties = sum(scores[c] == scores[r] for c, r in couples)
    return wins / len(couples), ties / len(couples)


def all_couples_accuracy(scores: dict[int, float], ratings: list[float], indices: list[int], min_diff: float):
    """Accuracy over every couple of test sentences whose ratings differ by >= min_diff."""
    import torch

    human = torch.tensor([ratings[i] for i in indices], dtype=torch.float64)
    model = torch.tensor([scores[i] for i in indices], dtype=torch.float64)
    human_gap = human[:, None] - human[None, :]
    valid = human_gap >= min_diff  # row i is the better one, by at least min_diff
    right = (model[:, None] - model[None, :]) > 0
    return float((right & valid).sum() / valid.sum()), int(valid.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--train-sentences", type=int, default=8000)
    parser.add_argument("--test-sentences", type=int, default=2000)
    parser.add_argument("--min-diff", type=float, default=0.5)
    parser.add_argument("--train-pairs", type=int, default=1200, help="cap on training pairs (0 = all)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--lora-top-layers", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--system-prompt", default="")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-rm-movie"))
    args = parser.parse_args()

    import torch

    from preftune.config import RMConfig, resolve_config
    from preftune.data.schema import Message, PreferencePair, write_jsonl
    from preftune.judges.registry import get_judge, score_batch
    from preftune.train.reward import train_reward_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = read_sentences(Path(args.data))
    ratings = [r for r, _ in rows]
    texts = [t for _, t in rows]
    if args.train_sentences + args.test_sentences > len(rows):
        sys.exit(f"error: {args.data}: {len(rows)} sentences, fewer than train + test")
    train_pool = list(range(args.train_sentences))
    test_pool = list(range(len(rows) - args.test_sentences, len(rows)))
    train_couples = make_couples(train_pool, ratings, args.min_diff, args.seed)
    available = len(train_couples)
    if args.train_pairs:
        train_couples = train_couples[: args.train_pairs]
    test_couples = make_couples(test_pool, ratings, args.min_diff, args.seed + 1)

    prompt = [Message("user", PROMPT)]
    if args.system_prompt != "default":
        prompt = [Message("system", args.system_prompt), *prompt]

    def as_pairs(couples):
        return [PreferencePair(prompt, Message("assistant", texts[c]), Message("assistant", texts[r]),
                               id=f"{c}>{r}", source="movie_review_snippets",
                               meta={"chosen_rating": ratings[c], "rejected_rating": ratings[r]})
                for c, r in couples]  # fmt: skip

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(as_pairs(train_couples), out / "train_pairs.jsonl")
    write_jsonl(as_pairs(test_couples), out / "test_pairs.jsonl")
    print(
        f"pairs: {len(train_couples)} train (of {available} available), {len(test_couples)} test",
        file=sys.stderr,
    )

    settings = dict(
        model=args.model, data=str(out / "train_pairs.jsonl"), out=str(out / "run"), lora=args.lora,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_top_layers=args.lora_top_layers if args.lora else 0,
        lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, max_length=args.max_length,
        max_prompt_length=min(64, args.max_length - 1), warmup_ratio=0.1, log_every=10, seed=args.seed,
    )  # fmt: skip
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        flags += (
            [flag]
            if value is True
            else [f"--no-{key.replace('_', '-')}"]
            if value is False
            else [flag, str(value)]
        )
    command = "preftune rm " + shlex.join(flags)
    print(f"equivalent command: {command}", file=sys.stderr)
    train_start = time.perf_counter()
    run = train_reward_model(resolve_config(RMConfig, None, settings), show_progress=sys.stderr.isatty())
    train_wall = time.perf_counter() - train_start

    # -- score each test sentence once, with the reward model and with VADER ----------------------
    test_sentences = sorted({i for couple in test_couples for i in couple})
    score_start = time.perf_counter()
    rm_judge = get_judge(f"rm:{run / 'final'}", batch_size=32, max_length=args.max_length,
                         max_prompt_length=min(64, args.max_length - 1))  # fmt: skip
    rm_scores = dict(zip(test_sentences, score_batch(rm_judge, [prompt] * len(test_sentences),
                                                     [texts[i] for i in test_sentences]), strict=True))  # fmt: skip
    score_wall = time.perf_counter() - score_start
    vader = get_judge("judge:sentiment")
    vader_scores = {i: vader(PROMPT, texts[i]) for i in test_pool}
    length_scores = {i: float(len(texts[i])) for i in test_pool}

    rm_acc, rm_ties = accuracy(rm_scores, test_couples)
    vader_acc, vader_ties = accuracy(vader_scores, test_couples)
    length_acc, _ = accuracy(length_scores, test_couples)
    # All couples among the sentences the reward model scored (those in a test pair), and for
    # VADER also among all test sentences.
    vader_all, n_all = all_couples_accuracy(vader_scores, ratings, test_pool, args.min_diff)
    rm_all, n_rm_all = all_couples_accuracy(rm_scores, ratings, test_sentences, args.min_diff)
    vader_same, _ = all_couples_accuracy(vader_scores, ratings, test_sentences, args.min_diff)

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_rows = [m for m in metrics if "loss" in m]
    trained_tokens = train_rows[-1]["num_tokens"] if train_rows else 0
    results = {
        "command": "python " + shlex.join(["bench/reward_model_movie.py", *sys.argv[1:]]),
        "equivalent_rm_command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}",
        "model": args.model,
        "train_pairs": len(train_couples),
        "test_pairs": len(test_couples),
        "test_sentences_scored": len(test_sentences),
        "train_wall_s": round(train_wall, 1),
        "train_tokens": trained_tokens,
        "train_tokens_per_s": round(trained_tokens / train_wall, 1) if train_wall else None,
        "score_wall_s": round(score_wall, 1),
        "total_wall_s": round(time.perf_counter() - started, 1),
        "train_loss_first_last": [train_rows[0]["loss"], train_rows[-1]["loss"]] if train_rows else None,
        "accuracy": {"reward_model": rm_acc, "vader": vader_acc, "longer_sentence": length_acc},
        "ties": {"reward_model": rm_ties, "vader": vader_ties},
        "all_couples_accuracy": {
            "reward_model": rm_all,
            "vader_same_sentences": vader_same,
            "vader_all_test": vader_all,
            "couples": n_rm_all,
            "couples_all_test": n_all,
        },  # fmt: skip
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with (out / "test_scores.jsonl").open("w", encoding="utf-8") as handle:  # for error analysis
        for i in test_sentences:
            row = {
                "line": i + 1,
                "rating": ratings[i],
                "reward": rm_scores[i],
                "vader": vader_scores[i],
                "text": texts[i],
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    table = [
        (f"reward model ({args.model}{', LoRA' if args.lora else ''})", rm_acc, rm_ties, rm_all),
        ("VADER compound (judge:sentiment)", vader_acc, vader_ties, vader_same),
        ("longer sentence wins", length_acc, None, None),
    ]
    print(f"\ntest pairs: {len(test_couples)} (last {args.test_sentences} sentences, |rating diff| >= {args.min_diff}); "
          f"train pairs: {len(train_couples)}; train {train_wall:.0f} s, scoring {score_wall:.0f} s")  # fmt: skip
    print(
        "| judge | pairwise accuracy | ties | accuracy, all couples of the same sentences |\n|---|---|---|---|"
    )
    for name, acc, ties, all_acc in table:
        tie_text = f"{ties:.3f}" if ties is not None else "-"
        all_text = f"{all_acc:.3f}" if all_acc is not None else "-"
        print(f"| {name} | {acc:.3f} | {tie_text} | {all_text} |")


if __name__ == "__main__":
    main()
