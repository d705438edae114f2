"""Handing items to annotators: overlap, load balance, gold items, and the left/right order.

`assign_items` is a top-up: run it after importing items or inviting people and it adds only what
is missing, so each ready (non-gold) item ends with `overlap` distinct human annotators (or every
annotator, if there are fewer). Each item goes to the least-loaded annotators who lack it, so work
stays even. Gold items are then mixed into each queue so that about `gold_rate` of it is gold.

Every new assignment draws which response sits on the left, per item and per annotator, and
stores it: what is shown is what was drawn, and the vote records it again. Randomising the side
cancels position bias on average and lets the quality page measure it (left-pick rate).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sqlalchemy import func, insert, select, update

from preftune.web import db
from preftune.web.store import Store


@dataclass
class AssignReport:
    created: int = 0
    gold_created: int = 0
    annotators: int = 0
    # Items that got fewer than `overlap` annotators because there are not enough people.
    short_items: int = 0
    per_annotator: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{self.created} assignments added ({self.gold_created} gold) for {self.annotators} annotators"
        if self.short_items:
            text += f"; {self.short_items} items have fewer annotators than the overlap (invite more people)"
        return text


def assign_items(store: Store, project_id: int, seed: int | None = None) -> AssignReport:
    """Top up assignments for a project (see module docstring). `seed` makes the draw repeatable."""
    rng = random.Random(seed)
    project = store.project(project_id)
    # Removed people keep their votes (and those assignments), which still count toward overlap.
    everyone = [u for u in store.users(project_id, removed=True) if u["role"] == "annotator"]
    humans = [u for u in everyone if u["removed_at"] is None]
    report = AssignReport(annotators=len(humans))
    if not humans:
        return report
    ready = store.items(project_id, pending=False)
    regular = [i["id"] for i in ready if i["gold"] is None]
    gold = [i["id"] for i in ready if i["gold"] is not None]
    human_ids = [u["id"] for u in humans]

    with store.write() as c:
        # Top-ups of one project take turns: on PostgreSQL two at once would both see an item as
        # missing and insert it twice (a unique violation, a 500). SQLite's write lock does this
        # already; there FOR UPDATE is not rendered.
        c.execute(select(db.projects.c.id).where(db.projects.c.id == project_id).with_for_update())
        a = db.assignments
        rows = c.execute(
            select(a.c.item_id, a.c.user_id).where(
                a.c.project_id == project_id, a.c.user_id.in_([u["id"] for u in everyone])
            )
        ).all()
        holders: dict[int, set[int]] = {}
        for item_id, user_id in rows:
            holders.setdefault(item_id, set()).add(user_id)
        gold_set = set(gold)
        load = {u: 0 for u in human_ids}
        for item_id, user_id in rows:
            if item_id not in gold_set and user_id in load:
                load[user_id] += 1

        new: dict[int, list[int]] = {u: [] for u in human_ids}
        rng.shuffle(regular)
        for item_id in regular:
            have = holders.setdefault(item_id, set())
            need = project["overlap"] - len(have)
            if need <= 0:
                continue
            # Least-loaded first; a random key breaks ties so no one is always first.
            free = sorted((u for u in human_ids if u not in have), key=lambda u: (load[u], rng.random()))
            chosen = free[:need]
            report.short_items += len(chosen) < need
            for user_id in chosen:
                have.add(user_id)
                load[user_id] += 1
                new[user_id].append(item_id)

        new_gold = _mix_gold(rng, project["gold_rate"], gold, holders, load, human_ids)
        next_position = dict(
            c.execute(
                select(a.c.user_id, func.max(a.c.position))
                .where(a.c.user_id.in_(human_ids))
                .group_by(a.c.user_id)
            ).all()
        )
        for user_id in human_ids:
            queue = [(item_id, False) for item_id in new[user_id]] + [(g, True) for g in new_gold[user_id]]
            # Shuffle the new part of the queue so gold items are not recognisable by position.
            rng.shuffle(queue)
            start = (next_position.get(user_id) or 0) + 1
            for offset, (item_id, is_gold) in enumerate(queue):
                c.execute(
                    insert(a).values(
                        project_id=project_id,
                        item_id=item_id,
                        user_id=user_id,
                        position=start + offset,
                        shown_left=rng.choice("ab"),
                        done=False,
                    )
                )
                report.created += 1
                report.gold_created += is_gold
            report.per_annotator[_name(humans, user_id)] = load[user_id]
    return report


def _mix_gold(rng, gold_rate, gold, holders, load, human_ids) -> dict[int, list[int]]:
    """Gold items per annotator so that gold / (gold + regular) is about `gold_rate`."""
    picks: dict[int, list[int]] = {u: [] for u in human_ids}
    if not gold or gold_rate <= 0:
        return picks
    for user_id in human_ids:
        have = sum(user_id in holders.get(g, ()) for g in gold)
        wanted = round(gold_rate / (1 - gold_rate) * load[user_id]) - have
        unseen = [g for g in gold if user_id not in holders.get(g, ())]
        rng.shuffle(unseen)
        for g in unseen[: max(wanted, 0)]:
            holders.setdefault(g, set()).add(user_id)
            picks[user_id].append(g)
    return picks


def _name(humans: list[dict], user_id: int) -> str:
    return next(u["name"] for u in humans if u["id"] == user_id)


def judge_assignment(connection, project_id: int, item_id: int, user_id: int) -> int:
    """The assignment row a judge's vote hangs on (created on demand; judges see no page)."""
    a = db.assignments
    found = connection.execute(select(a.c.id).where(a.c.item_id == item_id, a.c.user_id == user_id)).scalar()
    if found is not None:
        return found
    values = dict(project_id=project_id, item_id=item_id, user_id=user_id, position=item_id, shown_left="a")
    return connection.execute(insert(a).values(**values, done=False)).inserted_primary_key[0]


def reorder_queues(store: Store, project_id: int, scores: dict[int, float], seed: int | None = None) -> int:
    """Put every annotator's unvoted items in `active.priority_order` of `scores` (item id ->
    how much a vote on it would teach), after what they already did. Returns items reordered."""
    from preftune.web.active import priority_order

    a = db.assignments
    moved = 0
    with store.write() as c:
        c.execute(select(db.projects.c.id).where(db.projects.c.id == project_id).with_for_update())
        rows = c.execute(
            select(a.c.id, a.c.user_id, a.c.item_id, a.c.done, a.c.position).where(a.c.project_id == project_id)
        ).all()
        by_user: dict[int, list] = {}
        for row in rows:
            by_user.setdefault(row.user_id, []).append(row)
        for user_id, mine in by_user.items():
            undone = {row.item_id: row.id for row in mine if not row.done}
            start = max(row.position for row in mine) + 1
            order = priority_order({item: scores.get(item, 0.0) for item in undone}, seed=None if seed is None else seed + user_id)
            for offset, item_id in enumerate(order):
                c.execute(update(a).where(a.c.id == undone[item_id]).values(position=start + offset))
            moved += len(order)
    return moved
