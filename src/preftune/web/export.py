"""From votes to training pairs: majority per item, strength to margin, canonical JSONL.

For each item, the non-skip votes (people and judges alike) are counted. The most frequent label
wins; an even split at the top is "no majority" and the item is dropped. 'a'/'b' winners become
`PreferencePair`s. Ties and "both bad" are not preferences; they are dropped by default, and when
kept on request they become a pair with margin 0 and `meta.label` saying what they were.

Strength becomes `margin` through the "margin small" scale of Llama 2 (Touvron et al. 2023,
section 3.2.2, Table 28): much better 1, clearly 2/3, slightly 1/3, negligibly 0. The Bradley-Terry
loss with margin, -log sigmoid(r_chosen - r_rejected - margin), then asks for a wider reward gap
where people were surer. The margin is the mean over the winning votes that gave a strength.

Unpaired rows (TRL's KTO format, `{"prompt", "completion", "label"}`): a thumbs project's items
export that way, the majority of thumbs up or down giving the label (an even split drops the item);
a pairwise project's can too (`unpaired=True`): the winner becomes a desirable answer and the loser
an undesirable one, "both bad" (when kept) two undesirable answers, and a tie, which says nothing
about either answer alone, is dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preftune.web.store import NotFound, Store, StoreError
from preftune.web.votes import project_votes

DROPPABLE = ("tie", "both_bad")
STRENGTH_MARGIN = {1: 0.0, 2: 1 / 3, 3: 2 / 3, 4: 1.0}
_DROP_NAMES = {
    "tie": "tie",
    "ties": "tie",
    "both_bad": "both_bad",
    "both-bad": "both_bad",
    "bothbad": "both_bad",
}


@dataclass
class ExportReport:
    project: str
    items: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    path: str | None = None
    datasets_dir: str | None = None
    unit: str = "pairs"  # or "unpaired examples"

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        where = f" -> {self.path}" if self.path else ""
        return f"{self.project}: {self.items} items, {self.kept} {self.unit} kept, dropped: {reasons}{where}"


def parse_drop(text: str | None) -> tuple[str, ...]:
    """'ties,both_bad' -> ('tie', 'both_bad'); '' or 'none' -> (). Unknown names raise."""
    if text is None:
        return DROPPABLE
    names = [t.strip().lower() for t in text.split(",") if t.strip() and t.strip().lower() != "none"]
    unknown = [n for n in names if n not in _DROP_NAMES]
    if unknown:
        raise ValueError(f"--drop takes ties and/or both_bad, not {', '.join(unknown)}")
    return tuple(dict.fromkeys(_DROP_NAMES[n] for n in names))


def aggregate(
    items: list[dict[str, Any]],
    votes: list[dict[str, Any]],
    project: str,
    min_votes: int = 1,
    drop: tuple[str, ...] = DROPPABLE,
) -> tuple[list, Counter]:
    """(pairs, Counter of drop reasons) for a project's items and votes (see module docstring)."""
    from preftune.data.schema import Message, PreferencePair

    by_item: dict[int, list[dict[str, Any]]] = {}
    for vote in votes:
        if vote["choice"] != "skip":
            by_item.setdefault(vote["item_id"], []).append(vote)
    pairs, dropped = [], Counter()
    for item in items:
        mine = by_item.get(item["id"], [])
        if item["response_a"] is None:
            dropped["no responses yet"] += 1
            continue
        if not mine:
            dropped["no votes"] += 1
            continue
        if len(mine) < min_votes:
            dropped[f"fewer than {min_votes} votes"] += 1
            continue
        counts = Counter(v["choice"] for v in mine)
        (label, top), *rest = counts.most_common()
        if rest and rest[0][1] == top:
            dropped["no majority"] += 1
            continue
        if label in drop:
            dropped[label] += 1
            continue
        a = Message("assistant", item["response_a"])
        b = Message("assistant", item["response_b"])
        chosen, rejected = (b, a) if label == "b" else (a, b)
        strengths = [STRENGTH_MARGIN[v["strength"]] for v in mine if v["choice"] == label and v["strength"]]
        margin = 0.0 if label not in ("a", "b") else (sum(strengths) / len(strengths) if strengths else None)
        meta = {
            "label": label,
            # All four keys always, so a `datasets` folder gets one consistent schema.
            "votes": {k: counts.get(k, 0) for k in ("a", "b", "tie", "both_bad")},
            "agreement": top / len(mine),
            "item_id": item["id"],
            "gold": item["gold"],
        }
        pairs.append(
            PreferencePair(
                prompt=[Message(m["role"], m["content"]) for m in item["prompt"]],
                chosen=chosen,
                rejected=rejected,
                margin=margin,
                id=item["external_id"] or f"{project}:{item['id']}",
                source=f"preftune-label:{project}",
                meta=meta,
            )
        )
    return pairs, dropped


def aggregate_thumbs(
    items: list[dict[str, Any]], votes: list[dict[str, Any]], project: str, min_votes: int = 1
) -> tuple[list, Counter]:
    """(unpaired examples, Counter of drop reasons) for a thumbs project: majority up or down."""
    from preftune.data.schema import Message, UnpairedExample

    by_item: dict[int, list[str]] = {}
    for vote in votes:
        if vote["choice"] in ("up", "down"):
            by_item.setdefault(vote["item_id"], []).append(vote["choice"])
    examples, dropped = [], Counter()
    for item in items:
        mine = by_item.get(item["id"], [])
        reason = ("no answer yet" if item["response_a"] is None else "no votes" if not mine
                  else f"fewer than {min_votes} votes" if len(mine) < min_votes else None)  # fmt: skip
        up, down = mine.count("up"), mine.count("down")
        if reason is None and up == down:
            reason = "no majority"
        if reason:
            dropped[reason] += 1
            continue
        examples.append(UnpairedExample(
            prompt=[Message(m["role"], m["content"]) for m in item["prompt"]],
            completion=Message("assistant", item["response_a"]), label=up > down,
            id=item["external_id"] or f"{project}:{item['id']}", source=f"preftune-label:{project}",
            meta={"votes": {"up": up, "down": down}, "agreement": max(up, down) / len(mine), "item_id": item["id"],
                  "gold": item["gold"]},
        ))  # fmt: skip
    return examples, dropped


def unpaired_from_pairs(pairs: list, dropped: Counter) -> list:
    """A pairwise project's aggregated pairs as unpaired examples (see the module docstring)."""
    from preftune.data.schema import UnpairedExample
    from preftune.data.unpaired import unpair

    examples = []
    for pair in pairs:
        label = pair.meta.get("label")
        if label == "tie":
            dropped["tie (no thumbs for either answer)"] += 1
        elif label == "both_bad":
            meta = dict(pair.meta) | {"pair_id": pair.id}
            examples += [UnpairedExample(list(pair.prompt), answer, False, source=pair.source, meta=dict(meta))
                         for answer in (pair.chosen, pair.rejected)]  # fmt: skip
        else:
            examples += unpair([pair])
    return examples


def project_rows(store: Store, project: dict[str, Any], min_votes: int, drop: tuple[str, ...], unpaired: bool):
    """(rows to write, drop reasons, unit): pairs, or unpaired examples for a thumbs project or on request."""
    items, votes = store.items(project["id"]), project_votes(store, project["id"])
    if project["kind"] == "thumbs":
        examples, dropped = aggregate_thumbs(items, votes, project["name"], min_votes)
        return examples, dropped, "unpaired examples"
    pairs, dropped = aggregate(items, votes, project["name"], min_votes, drop)
    if unpaired:
        return unpaired_from_pairs(pairs, dropped), dropped, "unpaired examples"
    return pairs, dropped, "pairs"


def find_project(store: Store, name_or_id: str) -> dict[str, Any]:
    """A project by name or, failing that, by id (a project named "2024" wins over id 2024)."""
    try:
        return store.project_by_name(name_or_id)
    except NotFound:
        if not (name_or_id.isascii() and name_or_id.isdigit()):
            raise
    try:
        return store.project(int(name_or_id))
    except NotFound:
        raise NotFound(f"no project named {name_or_id!r} or with id {name_or_id} in {store.display_url}") from None


def export_project(
    db: str | Store,
    project: str,
    out: str | Path,
    *,
    min_votes: int = 1,
    drop: tuple[str, ...] | str = DROPPABLE,
    datasets_dir: str | Path | None = None,
    unpaired: bool = False,
) -> ExportReport:
    """`preftune export`: write a project's aggregated pairs as canonical JSONL (and a datasets folder);
    unpaired rows for a thumbs project, or for a pairwise one with `unpaired`."""
    from preftune.data.schema import write_jsonl

    if isinstance(drop, str):
        drop = parse_drop(drop)
    if min_votes < 1:
        raise ValueError(f"--min-votes must be at least 1, not {min_votes}")
    store = db if isinstance(db, Store) else Store(db)
    try:
        found = find_project(store, project)
        project = found["name"]
        items = store.items(found["id"])
        pairs, dropped, unit = project_rows(store, found, min_votes, drop, unpaired)
    except StoreError as error:
        raise ValueError(str(error)) from None
    finally:
        if not isinstance(db, Store):
            store.close()
    write_jsonl(pairs, out)
    report = ExportReport(project, len(items), len(pairs), dropped, str(out), unit=unit)
    if datasets_dir is not None:
        import datasets

        # Every row carries `margin` (None when unknown): from_list takes its columns from row one.
        # Unpaired rows go in TRL's conversational form, without meta, so every row has one shape.
        rows = [{**pair.to_dict(), "margin": pair.margin} if unit == "pairs" else _conversational(pair) for pair in pairs]
        datasets.Dataset.from_list(rows).save_to_disk(str(datasets_dir))
        report.datasets_dir = str(datasets_dir)
    return report


def _conversational(example) -> dict[str, Any]:
    return {"prompt": [m.to_dict() for m in example.prompt], "completion": [example.completion.to_dict()],
            "label": example.label, "id": example.id}  # fmt: skip
