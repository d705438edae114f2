"""`preftune demo --human` and `--ppo`: votes cast over HTTP to a real server become the labels, and
the report's proxy-against-gold panel shows what the PPO runs logged (tiny model, seconds)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import httpx
import pytest

from preftune import demo
from preftune.data.formats import read_pairs
from preftune.runlog import read_metrics
from preftune.web.labeling_round import LabelingRound

PROMPTS = [
    "Why is the sky blue?",
    "How do magnets work?",
    "Why does it rain?",
    "What is a star?",
    "Why do cats purr?",
]
CANDIDATES = [
    ["Light bounces off the air.", "Rayleigh scattering of short wavelengths by atmospheric molecules."],
    ["Magnets pull on iron.", "Aligned magnetic domains produce a macroscopic dipole field."],
    ["Clouds get heavy and drop water.", "Condensation nuclei coalesce until droplets precipitate."],
    ["A big ball of hot gas, far away.", "A self-gravitating plasma sustained by nuclear fusion."],
    ["Same answer.", "Same answer."],  # identical: no choice, never an item
]


def vote_all(base: str, link: str, choose, pause: float = 0.0) -> list[dict]:
    """Log in with the link and vote on the whole queue over HTTP, as the page's form does.
    `choose(prompt, left, right)` returns left/right/tie/both_bad/skip. Returns what was cast, per item."""
    cast = []
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get(link.removeprefix(base), follow_redirects=False).status_code == 303
        while True:
            page = client.get("/annotate", headers={"accept": "application/json"}).json()
            if page["item_id"] is None:
                break
            prompt = page["prompt"][-1]["content"]
            choice = choose(prompt, page["left"], page["right"])
            response = client.post(
                page["vote_url"],
                data={"vote_id": f"test-vote-{page['item_id']}", "choice": choice},
                headers={"x-csrf-token": page["csrf"], "accept": "application/json"},
            )
            assert response.status_code == 200, response.text
            cast.append({"prompt": prompt, "left": page["left"], "right": page["right"],
                         "choice": choice})  # fmt: skip
            time.sleep(pause)
    return cast


def simpler(prompt: str, left: str, right: str) -> str:
    """The voter's rule: the shorter answer (the kid-friendly one here), except one tie and one skip."""
    if "sky" in prompt:
        return "tie"
    if "rain" in prompt:
        return "skip"
    return "left" if len(left) <= len(right) else "right"


def shorter(prompt: str, left: str, right: str) -> str:
    return "left" if len(left) <= len(right) else "right"


def expected_pairs(cast: list[dict]) -> set[tuple[str, str, str]]:
    picked = [c for c in cast if c["choice"] in ("left", "right")]
    return {(c["prompt"], c[c["choice"]], c["right" if c["choice"] == "left" else "left"]) for c in picked}


def test_labeling_round_waits_for_every_vote_and_returns_exactly_the_votes_cast(tmp_path):
    labeling = LabelingRound(f"sqlite:///{tmp_path / 'labels.db'}", seed=3)
    try:
        assert labeling.prepare(PROMPTS, CANDIDATES) == 4  # the identical pair is no item
        link = labeling.start(port=0)
        base = link.split("/login/")[0]
        assert labeling.progress() == (0, 4)
        cast: list[dict] = []
        voter = threading.Thread(target=lambda: cast.extend(vote_all(base, link, simpler, pause=0.3)))
        voter.start()
        started = time.monotonic()
        labeling.wait(poll_seconds=0.1, show_progress=False, timeout=120)  # returns only once all four have a vote
        voter.join(timeout=30)
        assert time.monotonic() - started >= 0.9  # it really waited for the voter (3 pauses of 0.3 s)
        assert labeling.progress() == (4, 4) and len(cast) == 4
        pairs, dropped = labeling.pairs()
    finally:
        labeling.close()
    assert {(p.prompt[-1].content, p.chosen.content, p.rejected.content) for p in pairs} == expected_pairs(
        cast
    )
    assert len(pairs) == 2 and dropped == {"tie": 1, "no votes": 1}  # the skip left its item without a vote
    assert all(p.chosen.content.startswith(("Magnets pull", "A big ball")) for p in pairs)

    # Opening the same database again resumes the same project: the votes are still there.
    again = LabelingRound(f"sqlite:///{tmp_path / 'labels.db'}", seed=3)
    try:
        assert again.prepare(PROMPTS, CANDIDATES) == 4 and again.resumed
        assert again.progress() == (4, 4)
        with pytest.raises(Exception, match="made from other samples"):
            LabelingRound(f"sqlite:///{tmp_path / 'labels.db'}").prepare(PROMPTS[:3], CANDIDATES[:3])
    finally:
        again.close()


def test_ctrl_c_while_waiting_says_where_the_votes_are(tmp_path):
    # Something replaced the SIGINT handler (as a library may): the wait still stops on Ctrl-C.
    signal.signal(signal.SIGINT, lambda *_: None)
    said = []
    labeling = LabelingRound(f"sqlite:///{tmp_path / 'labels.db'}")
    try:
        labeling.prepare(PROMPTS, CANDIDATES)
        labeling.start(port=0)
        timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            labeling.wait(poll_seconds=0.05, show_progress=False, say=said.append, timeout=60)
        timer.join()
    finally:
        labeling.close()
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # put back as it was
    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert len(said) == 1 and "stopped waiting at 0 of 4 pairs voted" in said[0]
    assert "labels.db" in said[0] and "run the same command again" in said[0]


TINY = demo.DemoSize(train_prompts=8, eval_prompts=4, max_new_tokens=10, dpo_epochs=1, rm_epochs=1,
                     ppo_iterations=3, ppo_rollout=4, ppo_new_tokens=8, rm_top_layers=2)  # fmt: skip


def test_tiny_demo_with_human_votes_and_ppo(tmp_path, monkeypatch):
    """The whole demo on the tiny model: the votes cast become pairs.jsonl (what rm and dpo read),
    and the report's proxy-vs-gold panel shows exactly the two PPO runs' metrics.jsonl numbers."""
    out = tmp_path / "demo"
    cast: list[dict] = []
    voters: list[threading.Thread] = []
    said: list[str] = []
    real_say = demo._say

    def say(message: str) -> None:
        real_say(message)
        said.append(message)
        found = re.search(r"(http://127\.0\.0\.1:\d+)(/login/\S+)", message)
        if found:  # the demo printed its link: a person opens it and votes
            voter = threading.Thread(target=lambda: cast.extend(vote_all(found[1], found[0], shorter)))
            voters.append(voter)
            voter.start()

    monkeypatch.setattr(demo, "_say", say)
    # A voter that dies must fail the test, not leave the demo waiting for votes forever.
    wait = LabelingRound.wait
    monkeypatch.setattr(LabelingRound, "wait", lambda self, **kw: wait(self, **kw | {"timeout": 120}))
    result = demo.run_demo(str(out), human=True, ppo=True, model="tiny", size=TINY, port=0)
    for voter in voters:
        voter.join(timeout=30)

    pairs = read_pairs(out / "pairs.jsonl")[0]
    assert len(cast) >= demo.MIN_HUMAN_PAIRS and len(pairs) == len(cast)
    assert {(p.prompt[-1].content, p.chosen.content, p.rejected.content) for p in pairs} == expected_pairs(
        cast
    )
    assert result["demo"]["labels"] == "human" and result["demo"]["pairs"] == len(cast)
    # The voter picks the shorter answer (the left one at equal length), so on the held-out pairs
    # "shorter answer wins" agrees with every vote but those between equally long answers.
    held_out = read_pairs(out / "rm_held_out.jsonl")[0]
    rules = result["reward_model"]["rule_baselines"]
    agree = [1.0 if len(p.chosen.content) < len(p.rejected.content) else 0.5 for p in held_out]
    assert held_out and rules["shorter answer wins"] == sum(agree) / len(agree)
    assert set(rules) == set(demo.RULE_BASELINES) and all(0 <= value <= 1 for value in rules.values())
    assert f"one-rule baselines on the same pairs: shorter answer wins {rules['shorter answer wins']:.1%}" in "\n".join(said)
    report = (out / "report.html").read_text()
    for name, accuracy in [("reward model", result["reward_model"]["held_out_accuracy"]), *rules.items()]:
        assert f"<tr data-ranker='{name}'><td>{name}</td><td>{100 * accuracy:.1f}%</td></tr>" in report
    assert "the same way as your votes" in report
    # Reward model first, then PPO: the order the demo runs them in.
    assert report.index("id='reward-model'") < report.index("id='proxy-vs-gold'")

    assert "id='proxy-vs-gold'" in report and report.count("<svg") == 3
    assert set(result["ppo"]) == set(demo.PPO_RUNS)
    for label, folder in demo.PPO_FOLDERS.items():
        rows = [r for r in read_metrics(out / folder) if "objective/kl" in r]
        assert [r["step"] for r in rows] == [1, 2, 3]
        shown = re.findall(
            rf"<tr data-run='{re.escape(label)}'><td>[^<]*</td><td>(\d+)</td><td>([-\d.]+)</td><td>([-\d.]+)</td><td>([-\d.]+)</td>",
            report,
        )
        assert shown == [
            (
                str(r["step"]),
                f"{r['objective/scores']:.4f}",
                f"{r['objective/gold_scores']:.4f}",
                f"{r['objective/kl']:.4f}",
            )
            for r in rows
        ]
        assert result["ppo"][label]["curves"]["proxy"] == [r["objective/scores"] for r in rows]
        held_out = json.loads((out / f"{folder}-eval" / "eval.json").read_text())
        assert held_out["gold"] == "kid" and held_out["n_prompts"] == TINY.eval_prompts
        assert f"<tr data-held-out='{label}'>" in report
        assert result["ppo"][label]["held_out"]["gold_win_rate"] == held_out["judges"]["kid"]["win_rate"]
    kl0 = [r for r in read_metrics(out / "ppo-kl0") if "kl_coef" in r]
    assert all(r["kl_coef"] == 0.0 for r in kl0)
    assert json.loads((out / "eval.json").read_text())["ppo"]["no KL (kl_coef 0)"]["verdict"]


def test_proxy_gold_panel_shows_the_logged_numbers_and_says_what_they_show(tmp_path):
    from preftune.report import describe_run, insert_section, proxy_gold_section

    runs = {}
    for label, proxy, gold in (("KL-penalised", [0.5, 0.6, 0.7, 0.8, 0.8, 0.9], [0.6, 0.62, 0.65, 0.66, 0.7, 0.7]),
                               ("no KL", [0.5, 0.9, 1.2, 1.4, 1.5, 1.6], [0.6, 0.55, 0.5, 0.4, 0.3, 0.35])):  # fmt: skip
        run_dir = tmp_path / label.replace(" ", "-")
        run_dir.mkdir()
        rows = [{"step": 0, "eval/scores": 0.1}] + [
            {"step": i + 1, "objective/kl": 0.5 * i, "objective/scores": p, "objective/gold_scores": g}
            for i, (p, g) in enumerate(zip(proxy, gold, strict=True))
        ]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs[label] = run_dir
    report = tmp_path / "report.html"
    report.write_text("<!doctype html><html><body><h1>eval</h1></body></html>")
    insert_section(report, proxy_gold_section(runs, gold_name="kid judge"))
    text = report.read_text()
    assert text.index("<h1>eval</h1>") < text.index("id='proxy-vs-gold'") < text.index("</body>")
    assert text.count("<svg") == 3 and "gold: kid judge" in text
    assert (
        "<tr data-run='no KL'><td>no KL</td><td>3</td><td>1.2000</td><td>0.5000</td><td>1.0000</td></tr>"
        in text
    )
    assert "no KL: proxy +0.850, gold -0.250" in text and "reward hacking" in text
    assert "KL-penalised: proxy +0.300, gold +0.090" in text and "both rose" in text
    assert "too few" in describe_run("x", {"proxy": [1.0], "gold": [None]})
