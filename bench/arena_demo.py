"""Model arena and AI agreement on the demo's prompts, with the kid judge as the simulated annotator.

    python bench/arena_demo.py [--prompts 40] [--work /tmp/preftune-active] [--screenshots docs/img]

The "policies" are SmolLM2-135M-Instruct at four sampling temperatures (0.3, 0.7, 1.0, 1.3; up to
48 tokens, cached in --work): a stand-in for base / DPO / PPO checkpoints that this machine can
produce in minutes. Every pair of policies answers every prompt, so each prompt gives six items,
imported into a labeling project exactly as an admin would (a candidates file with `models`).
The kid judge votes on each item as the simulated annotator (a near-tie, gap < 0.02, is a tie);
the readability and sentiment judges vote as the AI whose suggestions the app can show. Prints the
arena leaderboard (the app's own `arena.leaderboard`) and the quality page's AI-human agreement,
and with --screenshots saves the arena and quality pages as rendered by Chromium.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

TEMPERATURES = (0.3, 0.7, 1.0, 1.3)
MAX_NEW_TOKENS = 48
MIN_SCORE_GAP = 0.02


def answers(work: Path, prompts: list[str]) -> dict[str, list[str]]:
    cache = work / f"arena-{len(prompts)}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from preftune.data.schema import user_prompt
    from preftune.demo import DEMO_MODEL
    from preftune.generate import generate_completions
    from preftune.models.load import load_policy

    policy, tokenizer = load_policy(DEMO_MODEL, seed=0)
    out = {}
    for temperature in TEMPERATURES:
        done = generate_completions(policy, tokenizer, [user_prompt(p) for p in prompts], 1, max_new_tokens=MAX_NEW_TOKENS,
                                    temperature=temperature, top_p=1.0, seed=1, batch_size=16)  # fmt: skip
        out[f"T={temperature}"] = [texts[0] for texts in done.texts]
    cache.write_text(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--work", default="/tmp/preftune-active")
    parser.add_argument("--screenshots", default=None, help="folder for arena.png and quality.png")
    args = parser.parse_args()
    from preftune.data.schema import user_prompt
    from preftune.demo import demo_prompts
    from preftune.judges import get_judge, score_batch
    from preftune.web.arena import battles, leaderboard
    from preftune.web.assign import assign_items
    from preftune.web.quality import judge_agreement
    from preftune.web.store import NewItem, Store
    from preftune.web.votes import project_votes, record_judge_vote, record_vote

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prompts = demo_prompts()[: args.prompts]
    by_policy = answers(work, prompts)
    store = Store(f"sqlite:///{tempfile.mkdtemp(prefix='preftune-arena-')}/arena.db")
    project_id = store.create_project("demo arena", overlap=1)
    items = [
        NewItem([{"role": "user", "content": prompt}], by_policy[a][n], by_policy[b][n], "arena", f"{n}:{a}-{b}", a, b)
        for n, prompt in enumerate(prompts)
        for a, b in itertools.combinations(by_policy, 2)
    ]
    ids = store.add_items(project_id, items)
    kid_id, _token = store.create_user("kid judge (simulated annotator)", "annotator", project_id)
    assign_items(store, project_id, seed=0)
    judges = {name: get_judge(name) for name in ("kid", "judge:readability", "judge:sentiment")}
    flat_prompts = [user_prompt(item.prompt[0]["content"]) for item in items for _ in range(2)]
    flat_answers = [text for item in items for text in (item.response_a, item.response_b)]
    for name, judge in judges.items():
        scores = score_batch(judge, flat_prompts, flat_answers)
        voter = None if name == "kid" else store.create_user(f"judge:{name.removeprefix('judge:')}", "judge", project_id)[0]
        for n, item_id in enumerate(ids):
            gap = scores[2 * n] - scores[2 * n + 1]
            choice = "tie" if abs(gap) < MIN_SCORE_GAP else "a" if gap > 0 else "b"
            if voter is None:
                record_vote(store, kid_id, item_id, f"kid-{item_id:06}", choice)
            else:
                record_judge_vote(store, project_id, voter, item_id, choice)
    votes = project_votes(store, project_id)
    fights = battles(store.items(project_id), votes)
    print(f"{len(prompts)} demo prompts x {len(TEMPERATURES)} policies: {len(fights)} battles judged by the kid judge")
    print("| rank | policy | rating | 95% CI | wins | ties | losses |")
    print("|---|---|---|---|---|---|---|")
    for rank, row in enumerate(leaderboard(fights), 1):
        print(f"| {rank} | {row.model} | {row.rating:.0f} | {row.ci_low:.0f} – {row.ci_high:.0f} | {row.wins} | {row.ties} | {row.losses} |")
    print("\n| AI judge | items | agrees with the (simulated) annotator | kappa |")
    print("|---|---|---|---|")
    for row in judge_agreement(votes):
        print(f"| {row.judge} | {row.items} | {100 * row.vote_agreement:.1f}% | {row.majority_kappa:.3f} |")
    if args.screenshots:
        screenshots(store, project_id, Path(args.screenshots))
    store.close()


def screenshots(store, project_id: int, folder: Path) -> None:
    """The arena and quality pages in Chromium, from a real server over this project's database."""
    import socket
    import threading
    import time

    import uvicorn
    from playwright.sync_api import sync_playwright

    from preftune.web.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(store, base_url=base), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(f"{base}/login/{store.new_admin_token()}")
        for name in ("arena", "quality"):
            page.goto(f"{base}/admin/projects/{project_id}/{name}")
            page.screenshot(path=str(folder / f"labeling_{name}.png"), full_page=True)
        browser.close()
    server.should_exit = True
    thread.join(timeout=20)


if __name__ == "__main__":
    main()
