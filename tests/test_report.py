"""`preftune report`: a self-contained HTML report of a real (tiny-model) DPO run, opened from disk.

The browser test opens the file with file:// while refusing every network request, so the report
must carry plotly, its data and its styles inside itself.
"""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from preftune.cli import app
from preftune.config import DPOConfig, resolve_config
from preftune.report import _json_for_script, render_report
from preftune.runlog import RunLog, read_metrics
from preftune.train import common
from preftune.train.dpo import train_dpo
from preftune.web import runs

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
runner = CliRunner()


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    """A finished tiny-model DPO run with held-out pairs, plus samples logged the way PPO logs them."""
    folder = tmp_path_factory.mktemp("report")
    rows = [{"prompt": f"Explain {t} to a five year old.", "chosen": f"A short, kind answer about {t}!",
             "rejected": "Irrelevant rambling text."} for t in ("rain", "bees", "trains", "bread", "magnets", "the moon")]  # fmt: skip
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = dict(model="tiny", data=str(folder / "pairs.jsonl"), out=str(folder / "run"), batch_size=4,
                    lr=1e-3, max_steps=3, eval_split=0.34, eval_every=2, seed=0)  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common, "reference_cache_dir", lambda: folder / "refcache")
        out = train_dpo(resolve_config(DPOConfig, None, settings), show_progress=False)
    written_by_trainer = (out / "report.html").exists()
    RunLog(out).log_samples(3, [
        {"prompt": "Explain rain.", "policy": "</script><script>window.__xss = 1</script> Rain falls.",
         "reference": "Water <b>drops</b> fall.", "policy_score": 0.75, "reference_score": 0.25},
        {"prompt": "Explain bees.", "policy": "Bees make honey.", "reference": "Insects.", "policy_score": 0.5,
         "reference_score": 0.125},
    ])  # fmt: skip
    return out, written_by_trainer


def test_every_training_run_ends_with_a_report(dpo_run):
    out, written_by_trainer = dpo_run
    assert written_by_trainer


def test_report_command_prints_the_path_and_refuses_a_folder_that_is_not_a_run(dpo_run, tmp_path):
    out, _ = dpo_run
    (out / "report.html").unlink()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out / "report.html") and (out / "report.html").exists()
    elsewhere = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "r" / "copy.html")])
    assert elsewhere.exit_code == 0 and (tmp_path / "r" / "copy.html").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in (empty, tmp_path / "missing"):
        failed = runner.invoke(app, ["report", str(bad)])
        assert failed.exit_code == 2
        assert failed.output.startswith(f"error: {bad}: not a") and failed.output.count("\n") == 1


def test_inlined_json_cannot_close_its_script_element():
    text = _json_for_script({"name": "</script><script>alert(1)</script>"})
    assert "</" not in text and json.loads(text) == {"name": "</script><script>alert(1)</script>"}


def test_report_contains_config_final_eval_and_escaped_samples(dpo_run):
    out, _ = dpo_run
    html = render_report(out)
    page = html.split("<script>")[0]  # everything but the inlined plotly.js and drawing code
    assert "<script src=" not in page and "<link" not in page and "http://" not in page
    summary = json.loads((out / "summary.json").read_text())
    assert f"{summary['metrics']['eval/loss']:.4f}" in html
    assert '<td>beta</td><td class="text">0.1</td>' in html
    assert "&lt;/script&gt;&lt;script&gt;window.__xss = 1&lt;/script&gt; Rain falls." in html
    assert "Water &lt;b&gt;drops&lt;/b&gt; fall." in html


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"browser tests need Debian's Chromium at {CHROMIUM}"
)
def test_report_opens_from_disk_with_no_server_and_shows_every_chart_and_the_samples(dpo_run):
    from playwright.sync_api import sync_playwright

    out, _ = dpo_run
    result = runner.invoke(app, ["report", str(out)])
    path = result.output.strip()
    rows = read_metrics(out)
    expected_charts = [c.id for c in runs.charts_for(["dpo"], rows)]
    assert len(expected_charts) >= 6
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        network: list[str] = []
        errors: list[str] = []

        def refuse(route):  # offline: anything but the file itself is refused and recorded
            if not route.request.url.startswith("file://"):
                network.append(route.request.url)
                return route.abort()
            return route.continue_()

        page.route("**/*", refuse)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"file://{path}")
        page.wait_for_function(
            "ids => ids.every(id => { const d = document.getElementById('chart-' + id);"
            " return d && d.data && d.data.length > 0 && d.querySelector('svg.main-svg'); })",
            arg=expected_charts,
            timeout=30_000,
        )
        drawn = page.evaluate("() => Array.from(document.querySelectorAll('.plot')).map(d => d.id)")
        assert drawn == [f"chart-{c}" for c in expected_charts]
        loss = page.evaluate("() => document.getElementById('chart-loss').data.find(t => t.name === 'loss')")
        train_rows = [r for r in rows if "loss" in r]
        assert loss["x"] == [r["step"] for r in train_rows] and loss["y"] == pytest.approx(
            [r["loss"] for r in train_rows]
        )
        samples = page.locator("#samples-table tbody tr")
        assert samples.count() == 2
        assert samples.first.locator("td").all_inner_texts() == [
            "3", "Explain rain.", "</script><script>window.__xss = 1</script> Rain falls.", "0.750",
            "Water <b>drops</b> fall.", "0.250",
        ]  # fmt: skip
        assert page.evaluate("window.__xss") is None
        assert "eval/loss" in page.inner_text("#final-eval")
        assert network == [] and errors == []
        browser.close()
