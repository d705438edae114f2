"""Each reward-hacking detector fires on a series that should trigger it and stays quiet otherwise."""

from __future__ import annotations

import json
import math

import pytest

from preftune.eval.hacking import HackingWarning, Thresholds, check_metrics, check_run, format_warnings
from preftune.runlog import RunLog

STEPS = list(range(10, 210, 10))  # 20 logged points


def rows(**columns):
    """Metric rows: rows(a=[...], b=[...]) -> [{"step": 10, "a": .., "b": ..}, ...]."""
    n = len(next(iter(columns.values())))
    return [{"step": STEPS[i]} | {k.replace("__", "/"): v[i] for k, v in columns.items()} for i in range(n)]


def names(warnings: list[HackingWarning]) -> list[str]:
    return [w.name for w in warnings]


def ramp(start, stop, n=20):
    return [start + (stop - start) * i / (n - 1) for i in range(n)]


def wiggle(center, amplitude, n=20):
    return [center + amplitude * math.sin(i * 1.7) for i in range(n)]


# ------------------------------------------------------------------------------- KL


def test_kl_above_target_fires_with_the_steps_and_values():
    kl = ramp(1, 4, 17) + [9.0, 10.0, 12.0]
    warnings = check_metrics(rows(objective__kl=kl), config={"target_kl": 5.0})
    assert names(warnings) == ["kl_runaway"]
    assert warnings[0].steps == [180, 190, 200]
    assert warnings[0].values == {"objective/kl": [9.0, 10.0, 12.0]}


def test_kl_near_target_is_quiet():
    assert check_metrics(rows(objective__kl=wiggle(5.0, 1.5)), config={"target_kl": 5.0}) == []
    # One spike above 1.5x target, then back: not sustained.
    assert (
        check_metrics(rows(objective__kl=wiggle(5.0, 0.5)[:18] + [9.0, 5.0]), config={"target_kl": 5.0}) == []
    )


def test_kl_without_target_fires_on_a_steady_climb_past_the_limit():
    assert names(check_metrics(rows(objective__kl=ramp(0.1, 25.0)))) == ["kl_runaway"]
    assert check_metrics(rows(objective__kl=ramp(0.1, 6.0))) == []  # climbing but still small
    assert check_metrics(rows(objective__kl=wiggle(12.0, 2.0))) == []  # large but flat


# ------------------------------------------------------------------------------- length


def test_length_growing_with_reward_fires():
    warnings = check_metrics(rows(objective__scores=ramp(0.0, 1.0), completions__mean_length=ramp(20, 45)))
    assert names(warnings) == ["length_drift"]
    assert "grew" in warnings[0].message and len(warnings[0].steps) == 20


def test_length_collapsing_with_reward_fires_too():
    warnings = check_metrics(rows(objective__scores=ramp(0.0, 1.0), completions__mean_length=ramp(40, 8)))
    assert names(warnings) == ["length_drift"] and "shrank" in warnings[0].message


def test_reward_rising_at_stable_length_is_quiet():
    assert check_metrics(rows(objective__scores=ramp(0.0, 1.0), completions__mean_length=wiggle(30, 2))) == []
    # Length drifts but the reward does not rise: nothing to pay for it.
    assert (
        check_metrics(rows(objective__scores=wiggle(0.5, 0.05), completions__mean_length=ramp(20, 45))) == []
    )


def test_length_drift_read_from_samples_when_metrics_lack_it():
    samples = []
    for i, step in enumerate(STEPS):
        for k in range(3):
            samples.append(
                {
                    "step": step,
                    "policy": " ".join(["good"] * (5 + 2 * i + k)),
                    "reference": "ok",
                    "policy_score": i / 19,
                }
            )
    assert names(check_metrics([], samples)) == ["length_drift"]


# ------------------------------------------------------------------------------- gold


def test_proxy_rising_while_gold_falls_fires():
    gold = ramp(0.0, 0.6, 8) + ramp(0.55, 0.1, 12)  # peaks at step 80, then falls
    warnings = check_metrics(rows(objective__scores=ramp(0, 2), eval__gold_scores=gold))
    assert names(warnings) == ["proxy_gold_divergence"]
    assert "step 80" in warnings[0].message
    assert warnings[0].values["eval/gold_scores"] == gold


def test_proxy_and_gold_rising_together_is_quiet():
    assert check_metrics(rows(objective__scores=ramp(0, 2), eval__gold_scores=ramp(0, 0.5))) == []
    # Gold falls, but so does the proxy: not over-optimisation.
    gold = ramp(0.0, 0.6, 8) + ramp(0.55, 0.1, 12)
    assert check_metrics(rows(objective__scores=gold, eval__gold_scores=gold)) == []


def test_gold_read_from_samples():
    samples = [{"step": s, "policy": "x", "policy_score": i, "policy_gold_score": min(i, 6) - max(0, i - 6)}
               for i, s in enumerate(STEPS)]  # fmt: skip
    assert names(check_metrics([], samples)) == ["proxy_gold_divergence"]


# ------------------------------------------------------------------------------- entropy, clipfrac


def test_entropy_collapse_fires_and_a_gentle_decline_does_not():
    assert names(check_metrics(rows(objective__entropy=ramp(40.0, 3.0)))) == ["entropy_collapse"]
    assert check_metrics(rows(objective__entropy=ramp(40.0, 30.0))) == []


def test_high_clip_fraction_fires_only_when_sustained():
    high = [0.05, 0.1] + [0.35] * 18
    warnings = check_metrics(rows(policy__clipfrac_avg=high))
    assert names(warnings) == ["high_clip_fraction"]
    assert warnings[0].steps == STEPS[2:]
    assert check_metrics(rows(policy__clipfrac_avg=wiggle(0.1, 0.05))) == []
    assert check_metrics(rows(policy__clipfrac_avg=[0.1] * 18 + [0.4, 0.1])) == []  # one spike


# ------------------------------------------------------------------------------- DPO


def test_dpo_falling_chosen_logps_fires_with_rejected_as_evidence():
    chosen = ramp(-120, -180)
    rejected = ramp(-125, -260)
    warnings = check_metrics(rows(logps__chosen=chosen, logps__rejected=rejected))
    assert names(warnings) == ["dpo_chosen_logps_falling"]
    assert warnings[0].values == {"logps/chosen": chosen, "logps/rejected": rejected}


def test_dpo_chosen_logps_holding_steady_is_quiet():
    assert check_metrics(rows(logps__chosen=wiggle(-120, 1.5), logps__rejected=ramp(-125, -200))) == []
    assert check_metrics(rows(logps__chosen=ramp(-120, -121.5))) == []  # falls, but by 1.5 nats only


def test_too_few_points_is_quiet():
    assert check_metrics(rows(objective__kl=[1.0, 50.0, 90.0]), config={"target_kl": 1.0}) == []


# ------------------------------------------------------------------------------- run folders


def test_check_run_reads_a_run_folder_and_formats(tmp_path):
    log = RunLog(tmp_path)
    for step, kl, clip in zip(STEPS, ramp(1, 4, 17) + [9.0, 10.0, 12.0], [0.3] * 20, strict=True):
        log.log(step, {"objective/kl": kl, "policy/clipfrac_avg": clip})
    (tmp_path / "config.yaml").write_text("target_kl: 5.0\nkl_coef: 0.05\n", encoding="utf-8")
    warnings = check_run(tmp_path)
    assert sorted(names(warnings)) == ["high_clip_fraction", "kl_runaway"]
    text = format_warnings(warnings)
    assert text.startswith("reward-hacking checks: 2 warnings")
    assert "warning [kl_runaway]" in text and "step: 180, 190, 200" in text
    json.dumps([w.to_dict() for w in warnings])  # serialisable, for the dashboard
    assert format_warnings([]) == "reward-hacking checks: no warnings"


def test_check_run_on_an_empty_folder(tmp_path):
    assert check_run(tmp_path) == []


def test_thresholds_are_adjustable():
    series = rows(policy__clipfrac_avg=[0.15] * 20)
    assert check_metrics(series) == []
    assert names(check_metrics(series, thresholds=Thresholds(clipfrac_limit=0.1))) == ["high_clip_fraction"]


@pytest.mark.parametrize("key", ["eval/kl", "objective/kl"])
def test_either_kl_key_is_read(key):
    series = [{"step": s, key: v} for s, v in zip(STEPS, ramp(0.1, 30.0), strict=True)]
    assert names(check_metrics(series)) == ["kl_runaway"]


# ------------------------------------------------------------------------------- explanations, printing


def test_every_detector_has_an_explanation_and_a_hint_and_both_are_printed():
    from preftune.eval.hacking import ABOUT, DETECTORS

    assert set(ABOUT) == set(DETECTORS)
    for name in DETECTORS:
        warning = HackingWarning(name, "seen", [1], {"x": [1.0]})
        assert warning.explanation and warning.hint and warning.to_dict()["hint"] == warning.hint
    warnings = check_metrics(rows(policy__clipfrac_avg=[0.35] * 20))
    text = format_warnings(warnings)
    assert f"warning [high_clip_fraction]: {ABOUT['high_clip_fraction'][0]}" in text
    assert f"try: {ABOUT['high_clip_fraction'][1]}" in text


def test_print_warnings_is_one_unwrapped_block_with_names_shown_literally():
    import io

    from rich.console import Console

    from preftune.eval.hacking import print_warnings

    warnings = check_metrics(rows(policy__clipfrac_avg=[0.35] * 20, objective__entropy=ramp(40.0, 3.0)))
    out = io.StringIO()
    print_warnings(warnings, console=Console(file=out, width=40, color_system=None))
    # Rich markup would swallow "[high_clip_fraction]"; a 40-column console would wrap these lines.
    assert out.getvalue().rstrip("\n") == format_warnings(warnings)
    out = io.StringIO()
    print_warnings([], console=Console(file=out, color_system=None))
    assert out.getvalue() == "reward-hacking checks: no warnings\n"


# ------------------------------------------------------------------------------- one JSONL reader


def test_samples_and_config_come_from_runlog_readers(tmp_path):
    from preftune import runlog
    from preftune.eval import hacking
    from preftune.web import runs

    log = RunLog(tmp_path)
    log.log_samples(10, [{"prompt": "p", "policy": "a b", "policy_score": 1.0}])
    with (tmp_path / "samples.jsonl").open("a") as half:
        half.write('{"step": 20, "prompt": "being writ')  # a line being written right now
    (tmp_path / "config.yaml").write_text("target_kl: 5.0\n", encoding="utf-8")
    assert runlog.read_samples(tmp_path) == [{"step": 10, "prompt": "p", "policy": "a b", "policy_score": 1.0}]
    assert runlog.read_run_config(tmp_path) == {"target_kl": 5.0}
    (tmp_path / "config.yaml").write_text("[unclosed", encoding="utf-8")
    assert runlog.read_run_config(tmp_path) == {} and runlog.read_run_config(tmp_path / "missing") == {}
    assert runlog.read_samples(tmp_path / "missing") == []
    # One reader: the detectors and the dashboard use runlog's, not copies of their own.
    assert hacking.read_run_config is runlog.read_run_config
    assert hacking.read_samples is runlog.read_samples and runs.read_samples is runlog.read_samples
    assert runs.read_config is runlog.read_run_config
