"""Human evaluation through the labeling app: policy-versus-reference items in, a win rate out.

`create_human_project` writes one item per (prompt, sample) into the labeling database, through
`web.store` like any import. Which side (a or b) holds the policy is drawn at random per item
(seeded) and recorded in the item's external id, `eval:PROMPT:ROW:policy=a|b`, so annotators
cannot learn a position and the mapping survives without any local file. (The app also shuffles
left/right per annotator; this second shuffle guards the stored a/b labels.)

`human_report` reads the votes back: each counted vote is 1 (policy preferred), 0 (reference
preferred) or 1/2 (tie, or both bad), and the votes feed the same win-rate statistics as a judge
(`winrate.py`: prompt = unit, Wilson interval, length control on the character-length gap).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

from ..data.schema import DataError
from .winrate import lc_win_rate, win_rate

EXTERNAL_ID = re.compile(r"^eval:(\d+):(\d+):policy=([ab])$")
SOURCE = "preftune-eval"
GUIDELINE = (
    "Two answers to the same prompt. Pick the better one; say how sure you are. "
    "Choose tie when they are equally good and both bad when neither is acceptable."
)


def create_human_project(
    db_url: str,
    project: str,
    prompts: list,
    policy_texts: list[str],
    ref_texts: list[str],
    *,
    prompt_index: list[int] | None = None,
    seed: int = 0,
    description: str = "",
) -> dict[str, Any]:
    """Create `project` in the labeling database with one item per row; returns where it went."""
    from ..web.store import NewItem, Store, StoreError

    if not (len(prompts) == len(policy_texts) == len(ref_texts)):
        raise ValueError(
            f"{len(prompts)} prompts, {len(policy_texts)} policy and {len(ref_texts)} reference texts"
        )
    prompt_index = prompt_index if prompt_index is not None else list(range(len(prompts)))
    rng = random.Random(seed)
    items = []
    for row, (prompt, policy, reference) in enumerate(zip(prompts, policy_texts, ref_texts, strict=True)):
        side = rng.choice("ab")
        a, b = (policy, reference) if side == "a" else (reference, policy)
        messages = (
            [m.to_dict() for m in prompt]
            if isinstance(prompt, list)
            else [{"role": "user", "content": str(prompt)}]
        )
        items.append(
            NewItem(
                messages, a, b, source=SOURCE, external_id=f"eval:{prompt_index[row]}:{row}:policy={side}"
            )
        )
    try:
        store = Store(db_url)
    except StoreError as error:
        raise DataError("--human", 0, str(error)) from None
    try:
        guideline = GUIDELINE + (f"\n\n{description}" if description else "")
        project_id = store.create_project(project, guideline=guideline)
        store.add_items(project_id, items)
        shown = store.display_url
    except StoreError as error:
        raise DataError("--human", 0, str(error)) from None
    finally:
        store.close()
    return {"db": shown, "project": project, "project_id": project_id, "items": len(items)}


def human_report(db_url: str, project: str, seed: int = 0) -> dict[str, Any]:
    """The win-rate report (eval.json shape, judge "human") from a project's votes."""
    from ..web.store import Store, StoreError
    from ..web.votes import project_votes

    try:
        store = Store(db_url)
    except StoreError as error:
        raise DataError("--from-labels", 0, str(error)) from None
    try:
        found = store.project_by_name(project)
        items = {item["id"]: item for item in store.items(found["id"])}
        votes = project_votes(store, found["id"])
    except StoreError as error:
        raise DataError("--project", 0, str(error)) from None
    finally:
        store.close()
    return votes_report(items, votes, project, seed)


def votes_report(
    items: dict[int, dict[str, Any]], votes: list[dict[str, Any]], project: str, seed: int = 0
) -> dict[str, Any]:
    """Pure part of `human_report`: items by id and their votes -> eval.json's shape."""
    outcomes, prompt_index, policy_len, ref_len = [], [], [], []
    counts: Counter = Counter()
    skipped: Counter = Counter()
    voted_items = set()
    for vote in votes:
        if vote["choice"] == "skip":
            continue
        item = items.get(vote["item_id"])
        match = EXTERNAL_ID.match((item or {}).get("external_id") or "")
        if not match:
            skipped["not an eval item"] += 1
            continue
        prompt, _, side = int(match.group(1)), int(match.group(2)), match.group(3)
        other = "b" if side == "a" else "a"
        choice = vote["choice"]
        outcome = 1.0 if choice == side else 0.0 if choice == other else 0.5
        counts[{side: "policy", other: "reference"}.get(choice, choice)] += 1
        outcomes.append(outcome)
        prompt_index.append(prompt)
        policy_text, ref_text = (
            (item["response_a"], item["response_b"])
            if side == "a"
            else (item["response_b"], item["response_a"])
        )
        policy_len.append(len(policy_text or ""))
        ref_len.append(len(ref_text or ""))
        voted_items.add(vote["item_id"])
    if not outcomes:
        raise DataError("--from-labels", 0, f"project {project!r} has no counted votes on eval items yet")
    # Outcomes as scores against a constant 1/2: 1 -> win, 0 -> loss, 1/2 -> tie.
    halves = [0.5] * len(outcomes)
    rate = win_rate(outcomes, halves, prompt_index)
    controlled = lc_win_rate(outcomes, halves, policy_len, ref_len, prompt_index, seed=seed)
    entry = rate.to_dict() | {
        "lc_win_rate": controlled.lc_win_rate,
        "lc_ci95": list(controlled.lc_ci95) if controlled.lc_ci95 else None,
        "length_coef": controlled.length_coef,
        "policy_mean": None,
        "ref_mean": None,
        "votes": {k: counts.get(k, 0) for k in ("policy", "reference", "tie", "both_bad")},
    }
    return {
        "project": project,
        "n_prompts": rate.n_prompts,
        "n_items": len(voted_items),
        "n_votes": len(outcomes),
        "skipped_votes": dict(skipped),
        "judges": {"human": entry},
        "length": {
            "unit": "characters",
            "policy_mean": sum(policy_len) / len(policy_len),
            "ref_mean": sum(ref_len) / len(ref_len),
        },
    }
