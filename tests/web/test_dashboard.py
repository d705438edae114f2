"""The training dashboard: run folders read back, the live data endpoint, and pages in Chromium.

Run folders are written with `RunLog`, the trainers' own writer, while the page is open. A
screenshot of each page is saved under docs/img/ for the README tour.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import threading
import time
from html import escape as html_escape
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from preftune.config import DPOConfig, PPOConfig, resolve_config
from preftune.eval.hacking import check_metrics, check_run
from preftune.runlog import RunLog, read_metrics
from preftune.web import runs
from preftune.web.app import create_app
from preftune.web.store import Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def dpo_log(root: Path, name: str) -> RunLog:
    config = resolve_config(
        DPOConfig, None, {"model": "tiny", "data": "pairs.jsonl", "out": str(root / name)}
    )
    return RunLog(root / name, config)


def ppo_log(root: Path, name: str) -> RunLog:
    settings = {
        "model": "tiny",
        "prompts": "prompts.txt",
        "reward": "judge:sentiment",
        "out": str(root / name),
    }
    return RunLog(root / name, resolve_config(PPOConfig, None, settings))


def healthy_dpo_row(step: int) -> dict:
    # The chosen response gains probability while the margin grows: what DPO should look like.
    return {"loss": 0.69 / step, "rewards/chosen": 0.1 * step, "rewards/rejected": -0.1 * step,
            "rewards/margins": 0.2 * step, "rewards/accuracies": min(1.0, 0.5 + 0.1 * step),
            "logps/chosen": -100.0 + step, "logps/rejected": -100.0 - 2 * step,
            "grad_norm": 1.0 / step, "learning_rate": 1e-5 * (1 - step / 40)}  # fmt: skip


def collapsing_dpo_row(step: int, start: int) -> dict:
    # Both responses lose probability; the rejected one faster, so the margin still grows.
    row = healthy_dpo_row(step)
    row["logps/chosen"] = -100.0 + start - 3.0 * (step - start)
    row["logps/rejected"] = -100.0 - 2 * start - 6.0 * (step - start)
    return row


# ---- reading runs -------------------------------------------------------------------------------


def test_run_warnings_are_those_of_eval_hacking_check_run(tmp_path):
    log = dpo_log(tmp_path, "dpo")
    for step in range(1, 5):
        log.log(step, healthy_dpo_row(step))
    assert runs.run_warnings(tmp_path / "dpo") == [] and check_run(tmp_path / "dpo") == []
    for step in range(5, 21):
        log.log(step, collapsing_dpo_row(step, 4))
    warnings = runs.run_warnings(tmp_path / "dpo")
    assert warnings == [w.to_dict() for w in check_run(tmp_path / "dpo")]
    assert [w["name"] for w in warnings] == ["dpo_chosen_logps_falling"]
    assert warnings[0]["steps"] == list(range(1, 21)) and warnings[0]["hint"]
    # The static report shows the same warnings (report.py renders run_warnings), evidence aside.
    from preftune.report import render_report

    page = render_report(tmp_path / "dpo")
    assert 'data-warning="dpo_chosen_logps_falling"' in page and html_escape(warnings[0]["message"]) in page
    rng = random.Random(0)
    noisy = [{"step": s, "logps/chosen": -100 + rng.gauss(0, 3), "rewards/margins": 0.1 * s} for s in range(1, 30)]
    assert check_metrics(noisy) == []


def test_runs_are_found_only_inside_the_runs_folder(tmp_path):
    dpo_log(tmp_path, "a").log(1, healthy_dpo_row(1))
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    listed = runs.list_runs(tmp_path)
    assert [r["id"] for r in listed] == ["a"] and listed[0]["kind"] == "dpo" and listed[0]["steps"] == 1
    assert runs.find_run(tmp_path, "a") == tmp_path / "a"
    for bad in ("..", ".", "", "a/../a", "../" + tmp_path.name, "not-a-run", "missing"):
        assert runs.find_run(tmp_path, bad) is None, bad


def test_run_kind_and_charts_come_from_metrics_or_config(tmp_path):
    assert runs.run_kind({}, [{"step": 1, "objective/kl": 0.1}]) == "ppo"
    assert runs.run_kind({}, [{"step": 1, "objective/kl": 0.1, "reward": 1.0, "frac_reward_zero_std": 0.5}]) == "grpo"
    assert runs.run_kind({"num_generations": 4}, []) == "grpo"
    grpo = runs.charts_for(["grpo"], [{"step": 1, "reward": 1.0, "kl": 0.1, "rewards/exact_match/mean": 0.2}])
    assert [c.id for c in grpo[:3]] == ["scores", "kl", "score-vs-sqrt-kl"]
    assert grpo[-1].title == "rewards/exact_match/mean"  # each reward part gets a chart of its own
    assert runs.run_kind({}, [{"step": 1, "rewards/margins": 0.1}]) == "dpo"
    assert runs.run_kind({}, [{"step": 1, "accuracy": 0.5, "mean_reward": 0.0}]) == "rm"
    ppo_log(tmp_path, "p")  # config only, no metrics yet: a run that just started
    assert runs.run_kind(runs.read_config(tmp_path / "p"), []) == "ppo"
    charts = runs.charts_for(["dpo"], [{"step": 1, "loss": 1.0, "nll_loss": 2.0, "epoch": 1.0}])
    ids = [c.id for c in charts]
    assert ids[:6] == ["loss", "rewards", "accuracies", "logps", "grad-norm", "learning-rate"]
    assert ids[6:] == ["metric-nll-loss"]  # a metric no chart covers gets its own; bookkeeping does not


def test_data_endpoint_sends_only_new_rows_and_resets_after_a_resume_truncation(tmp_path):
    log = dpo_log(tmp_path, "run")
    for step in range(1, 6):
        log.log(step, healthy_dpo_row(step))
    client = TestClient(create_app(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), runs=tmp_path, base_url="http://testserver"))
    first = client.get("/runs/run/data").json()
    assert (
        [r["step"] for r in first["rows"]] == [1, 2, 3, 4, 5]
        and not first["reset"]
        and first["warnings"] == []
    )
    assert client.get("/runs/run/data", params={"since": 5}).json()["rows"] == []
    log.log(6, healthy_dpo_row(6))
    assert [r["step"] for r in client.get("/runs/run/data", params={"since": 5}).json()["rows"]] == [6]
    log.truncate_after(3)  # what a resume from the step-3 checkpoint does
    again = client.get("/runs/run/data", params={"since": 6}).json()
    assert again["reset"] and [r["step"] for r in again["rows"]] == [1, 2, 3]
    assert client.get("/runs/missing/data").status_code == 404
    assert client.get("/runs/..%2F..%2Fetc/data").status_code == 404
    page = client.get("/runs/run")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe" not in page.headers["content-security-policy"]


def test_plotly_is_served_from_the_installed_package_and_no_runs_folder_is_explained(tmp_path):
    client = TestClient(create_app(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), base_url="http://testserver"))
    script = client.get("/vendor/plotly.min.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert script.content == runs.plotly_js_path().read_bytes()
    css = client.get("/vendor/plotly.css").text
    assert ".js-plotly-plot .plotly .main-svg{position:absolute" in css and len(css.splitlines()) > 20
    assert "preftune serve --runs DIR" in client.get("/runs").text


# ---- pages in Chromium --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(base URL, runs folder, browser page) of a live server over an initially empty runs folder."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)")
    import uvicorn
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("runs")
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('db') / 'live.db'}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(store, runs=root), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.on("console", lambda m: m.type == "error" and "404" not in m.text and page.errors.append(m.text))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", root, page
        browser.close()
    server.should_exit = True
    thread.join(timeout=20)
    sock.close()
    store.close()


TRACE = "([chart, name]) => (document.getElementById(chart).data || []).find(t => t.name === name)"


def trace(page, chart: str, name: str) -> dict | None:
    return page.evaluate(
        f"a => {{ const t = ({TRACE})(a); return t ? {{x: t.x, y: t.y}} : null; }}", [chart, name]
    )


def wait_points(page, chart: str, name: str, count: int) -> None:
    page.wait_for_function(
        f"a => {{ const t = ({TRACE})(a); return t && t.x.length === {count}; }}",
        arg=[chart, name],
        timeout=30_000,
    )


def test_open_page_gains_new_points_without_reload_and_shows_the_warning(site):
    base, root, page = site
    log = dpo_log(root, "dpo-live")
    for step in range(1, 5):
        log.log(step, healthy_dpo_row(step))
    page.goto(f"{base}/runs/dpo-live")
    wait_points(page, "chart-loss", "loss", 4)
    assert page.is_hidden("#warnings-0")
    page.evaluate("window.__samePage = 'still here'")

    for step in range(5, 17):  # the run keeps training while the page is open
        log.log(step, collapsing_dpo_row(step, 4))
    wait_points(page, "chart-loss", "loss", 16)
    assert page.evaluate("window.__samePage") == "still here"  # no reload happened
    rows = read_metrics(root / "dpo-live")
    assert trace(page, "chart-loss", "loss") == {
        "x": [r["step"] for r in rows],
        "y": [r["loss"] for r in rows],
    }
    assert trace(page, "chart-logps", "logps/chosen")["y"] == [r["logps/chosen"] for r in rows]
    page.wait_for_selector("#warnings-0:not([hidden])", timeout=30_000)
    (expected,) = check_run(root / "dpo-live")
    shown = page.locator("#warnings-0 .run-warning")
    assert shown.count() == 1 and shown.get_attribute("data-warning") == "dpo_chosen_logps_falling"
    assert page.inner_text("#warnings-0 .warning-message") == expected.message
    for chart in ("loss", "rewards", "accuracies", "logps", "grad-norm", "learning-rate"):
        assert page.evaluate(
            f"document.getElementById('chart-{chart}').classList.contains('js-plotly-plot')"
        ), chart
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMG / "dashboard_dpo.png"), full_page=True)
    assert page.errors == []


def test_two_runs_overlay_on_the_same_charts(site):
    base, root, page = site
    for name, scale in (("dpo-lr-high", 2.0), ("dpo-lr-low", 1.0)):
        log = dpo_log(root, name)
        for step in range(1, 9):
            log.log(step, healthy_dpo_row(step) | {"loss": 0.69 / (scale * step)})
    page.goto(f"{base}/runs")
    assert page.locator("table.runs a", has_text="dpo-lr-high").count() == 1
    page.check("input[aria-label='overlay dpo-lr-high']")
    page.check("input[aria-label='overlay dpo-lr-low']")
    with page.expect_navigation():
        page.click("text=Overlay the ticked runs")
    assert "/runs/compare?" in page.url
    for name, scale in (("dpo-lr-high", 2.0), ("dpo-lr-low", 1.0)):
        wait_points(page, "chart-loss", f"{name} · loss", 8)
        assert trace(page, "chart-loss", f"{name} · loss")["y"] == pytest.approx(
            [0.69 / (scale * s) for s in range(1, 9)]
        )
    page.screenshot(path=str(DOCS_IMG / "dashboard_overlay.png"), full_page=True)
    assert page.errors == []


def test_ppo_page_plots_score_against_sqrt_kl_and_shows_escaped_samples_side_by_side(site):
    base, root, page = site
    log = ppo_log(root, "ppo-run")
    sample = {"prompt": "Say hi <img src=x onerror=window.__xss=1>", "policy": "<script>window.__xss=2</script>hi!",
              "reference": "hello", "policy_score": 0.9, "reference_score": 0.1}  # fmt: skip
    log.log(0, {"eval/scores": 0.1, "eval/ref_scores": 0.1, "eval/kl": 0.0, "eval/mean_length": 12.0})
    log.log_samples(0, [sample | {"policy": "hello"}])
    for step in range(1, 11):
        kl = 0.3 * step
        log.log(step, {"objective/kl": kl, "objective/scores": math.sqrt(kl) * (1.2 - 0.1 * math.sqrt(kl)),
                       "objective/rlhf_reward": 0.5, "objective/non_score_reward": -0.05 * kl, "kl_coef": 0.05,
                       "objective/entropy": 20.0 - step, "policy/clipfrac_avg": 0.1, "policy/approxkl_avg": 0.01,
                       "completions/mean_length": 20.0 + step, "loss/policy_avg": -0.1, "loss/value_avg": 0.2})  # fmt: skip
    log.log(10, {"eval/scores": 0.8, "eval/ref_scores": 0.1, "eval/kl": 2.5, "eval/mean_length": 25.0})
    log.log_samples(10, [sample, sample | {"prompt": "Second prompt", "policy_score": 0.7}])

    page.goto(f"{base}/runs/ppo-run")
    wait_points(page, "chart-score-vs-sqrt-kl", "objective/scores vs √objective/kl", 10)
    plotted = trace(page, "chart-score-vs-sqrt-kl", "objective/scores vs √objective/kl")
    assert plotted["x"] == pytest.approx([math.sqrt(0.3 * s) for s in range(1, 11)])
    assert trace(page, "chart-score-vs-sqrt-kl", "eval/scores vs √eval/kl")["x"] == pytest.approx(
        [0.0, math.sqrt(2.5)]
    )
    for chart in ("scores", "kl", "kl-coef", "rlhf-reward", "clipfrac", "approxkl", "entropy", "length"):
        assert trace(
            page, f"chart-{chart}", page.evaluate(f"document.getElementById('chart-{chart}').data[0].name")
        )["x"], chart

    page.wait_for_function("() => document.querySelectorAll('#samples-body-0 tr').length === 2")
    cells = page.locator("#samples-body-0 tr").first.locator("td").all_inner_texts()
    assert cells == [
        sample["prompt"],
        sample["policy"],
        "0.900",
        "hello",
        "0.100",
    ]  # shown as text, side by side
    assert page.locator("#samples-body-0 img, #samples-body-0 script").count() == 0
    page.select_option("#samples-step-0", "0")
    page.wait_for_function("() => document.querySelectorAll('#samples-body-0 tr').length === 1")
    assert page.locator("#samples-body-0 td").nth(1).inner_text() == "hello"
    assert page.evaluate("window.__xss") is None
    page.select_option("#samples-step-0", "10")
    page.screenshot(path=str(DOCS_IMG / "dashboard_ppo.png"), full_page=True)
    assert page.errors == []


def test_run_page_shows_each_reward_hacking_warning_with_its_evidence(site):
    """A metrics.jsonl written by hand (no trainer) whose KL runs past its target and whose PPO clip
    fraction stays high: the page shows exactly check_run's two warnings, steps and values included."""
    base, root, page = site
    run = root / "ppo-hacking"
    run.mkdir()
    (run / "config.yaml").write_text("rollout_batch: 8\ntarget_kl: 5.0\n", encoding="utf-8")
    kl = [1.0 + 0.2 * i for i in range(17)] + [9.0, 10.0, 12.0]
    lines = [{"step": s, "objective/kl": k, "objective/scores": 0.5, "policy/clipfrac_avg": 0.35}
             for s, k in zip(range(10, 210, 10), kl, strict=True)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    expected = check_run(run)
    assert [w.name for w in expected] == ["kl_runaway", "high_clip_fraction"]

    page.goto(f"{base}/runs/ppo-hacking")
    page.wait_for_selector("#warnings-0:not([hidden]) .run-warning", timeout=30_000)
    shown = page.locator("#warnings-0 .run-warning")
    assert [shown.nth(i).get_attribute("data-warning") for i in range(shown.count())] == [w.name for w in expected]
    kl_box = page.locator("#warnings-0 [data-warning=kl_runaway]")
    assert kl_box.is_visible()
    assert kl_box.locator("strong").inner_text() == "Warning: kl_runaway"
    assert expected[0].explanation in kl_box.inner_text()
    assert kl_box.locator(".warning-message").inner_text() == expected[0].message
    assert kl_box.locator(".warning-hint").inner_text() == "Try: " + expected[0].hint
    evidence = [row.locator("th, td").all_inner_texts() for row in kl_box.locator(".evidence tr").all()]
    assert evidence == [["step", "180", "190", "200"], ["objective/kl", "9.000", "10.00", "12.00"]]
    clip_steps = page.locator("#warnings-0 [data-warning=high_clip_fraction] .evidence tr").first
    assert clip_steps.locator("td").all_inner_texts()[0] == "10"  # up to 8 of its 20 steps, first ...
    assert clip_steps.locator("td").all_inner_texts()[-1] == "200"  # ... and last
    page.screenshot(path=str(DOCS_IMG / "dashboard_warnings.png"), full_page=True)
    assert page.errors == []
