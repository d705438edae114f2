"""Per-annotator quality numbers and the export's aggregation rules, on hand-made votes."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from preftune.web.export import aggregate, export_project, parse_drop
from preftune.web.quality import TOO_FAST_SECONDS, annotator_quality


def _vote(user, item, choice, *, left="a", seconds=10.0, gold=None, strength=None, role="annotator"):
    return {
        "user_id": user,
        "user_name": user,
        "user_role": role,
        "item_id": item,
        "choice": choice,
        "shown_left": left,
        "seconds": seconds,
        "gold": gold,
        "strength": strength,
    }


def test_annotator_quality_rows():
    votes = [
        # ann: careful; picks left 2 of 4 A/B votes; 1 of 2 gold right.
        _vote("ann", 1, "a", left="a", seconds=12),
        _vote("ann", 2, "a", left="b", seconds=20),
        _vote("ann", 3, "b", left="b", seconds=8, gold="b"),
        _vote("ann", 4, "b", left="a", seconds=30, gold="a"),
        _vote("ann", 5, "skip", seconds=1),
        # bob: fast, always left.
        *[
            _vote("bob", i, "a" if i % 2 else "b", left="a" if i % 2 else "b", seconds=1.5)
            for i in range(1, 13)
        ],
        _vote("judge:sentiment", 1, "a", seconds=None, role="judge"),
    ]
    rows = {row.name: row for row in annotator_quality(votes)}
    ann, bob, judge = rows["ann"], rows["bob"], rows["judge:sentiment"]
    assert (ann.votes, ann.skips, ann.median_seconds, ann.too_fast) == (4, 1, 16.0, False)
    assert (ann.left_pick_rate, ann.left_pick_votes, ann.position_bias) == (0.5, 4, False)
    assert (ann.gold_votes, ann.gold_accuracy) == (2, 0.5)
    assert bob.median_seconds == 1.5 < TOO_FAST_SECONDS and bob.too_fast
    # 12 of 12 left: z = 6 / sqrt(3) = 3.46 > 2.58.
    assert (bob.left_pick_rate, bob.position_bias) == (1.0, True)
    assert bob.gold_accuracy is None
    assert (judge.role, judge.median_seconds, judge.left_pick_rate) == ("judge", None, None)


ITEMS = [
    {
        "id": i,
        "prompt": [{"role": "user", "content": f"q{i}"}],
        "response_a": f"a{i}",
        "response_b": f"b{i}",
        "external_id": None,
        "gold": None,
    }
    for i in range(1, 5)
]


def test_aggregate_rules():
    votes = [
        _vote("x", 1, "a", strength=1),
        _vote("y", 1, "a", strength=3),
        _vote("z", 1, "b", strength=4),
        _vote("x", 2, "both_bad"),
        _vote("y", 2, "both_bad"),
        _vote("x", 3, "tie"),
        _vote("x", 4, "skip"),
    ]
    pairs, dropped = aggregate(ITEMS, votes, "p", min_votes=1, drop=("both_bad",))
    assert dropped == Counter({"both_bad": 1, "no votes": 1})
    first, tie = pairs
    # Winning 'a' votes: negligibly (0) and clearly (2/3): margin 1/3; the losing vote's strength is ignored.
    assert (first.chosen.content, first.margin) == ("a1", pytest.approx(1 / 3))
    assert first.meta["agreement"] == pytest.approx(2 / 3) and first.id == "p:1"
    assert (tie.meta["label"], tie.margin) == ("tie", 0.0)
    pairs, dropped = aggregate(ITEMS, votes, "p", min_votes=2)
    assert [p.meta["item_id"] for p in pairs] == [1]
    assert dropped == Counter({"both_bad": 1, "fewer than 2 votes": 1, "no votes": 1})


def test_parse_drop():
    assert parse_drop("ties,both_bad") == ("tie", "both_bad")
    assert parse_drop("none") == () and parse_drop("") == ()
    with pytest.raises(ValueError, match="--drop takes ties and/or both_bad, not wins"):
        parse_drop("ties,wins")


def test_export_writes_jsonl_and_a_datasets_folder(sqlite_store, tmp_path):
    import datasets

    from preftune.web.assign import assign_items
    from preftune.web.store import NewItem
    from preftune.web.votes import record_vote

    project_id = sqlite_store.create_project("exp")
    sqlite_store.add_items(
        project_id, [NewItem([{"role": "user", "content": "q"}], "yes", "no", external_id="ext-1")]
    )
    user_id = sqlite_store.create_user("ann", "annotator", project_id)[0]
    assign_items(sqlite_store, project_id)
    record_vote(sqlite_store, user_id, 1, "vote-000001", "b", 2)
    report = export_project(sqlite_store.url, "exp", tmp_path / "out.jsonl", datasets_dir=tmp_path / "ds")
    assert report.summary() == f"exp: 1 items, 1 pairs kept, dropped: none -> {tmp_path / 'out.jsonl'}"
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert (row["chosen"]["content"], row["rejected"]["content"], row["id"]) == ("no", "yes", "ext-1")
    assert row["margin"] == pytest.approx(1 / 3)
    loaded = datasets.load_from_disk(str(tmp_path / "ds"))
    assert loaded[0]["chosen"] == row["chosen"] and loaded[0]["margin"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no project named 'nope'"):
        export_project(sqlite_store.url, "nope", tmp_path / "x.jsonl")


def test_export_command_takes_a_project_name_or_id(sqlite_store, tmp_path):
    from typer.testing import CliRunner

    from preftune.cli import app as cli
    from preftune.web.assign import assign_items
    from preftune.web.store import NewItem
    from preftune.web.votes import record_vote

    sqlite_store.create_project("first")
    project_id = sqlite_store.create_project("second")
    named_like_an_id = sqlite_store.create_project(str(project_id - 1 + 100))  # "101": a name, not id 101
    item = NewItem([{"role": "user", "content": "q"}], "yes", "no")
    (item_id,) = sqlite_store.add_items(project_id, [item])
    user_id = sqlite_store.create_user("ann", "annotator", project_id)[0]
    assign_items(sqlite_store, project_id)
    record_vote(sqlite_store, user_id, item_id, "vote-000009", "a")
    runner = CliRunner()
    by_id = runner.invoke(cli, ["export", "--db", sqlite_store.url, "--project", str(project_id), "-o", str(tmp_path / "a.jsonl")])
    assert by_id.exit_code == 0, by_id.output
    assert by_id.output.startswith("second: 1 items, 1 pairs kept")
    assert json.loads((tmp_path / "a.jsonl").read_text())["source"] == "preftune-label:second"
    by_name = runner.invoke(cli, ["export", "--db", sqlite_store.url, "--project", "second", "-o", str(tmp_path / "b.jsonl")])
    assert (tmp_path / "b.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes(), by_name.output
    # A name made of digits is taken as the name first.
    numeric = runner.invoke(cli, ["export", "--db", sqlite_store.url, "--project", "101", "-o", str(tmp_path / "c.jsonl")])
    assert numeric.exit_code == 0 and numeric.output.startswith("101: 0 items"), (named_like_an_id, numeric.output)
    missing = runner.invoke(cli, ["export", "--db", sqlite_store.url, "--project", "77", "-o", str(tmp_path / "d.jsonl")])
    assert missing.exit_code == 2 and "no project named '77' or with id 77" in missing.output
