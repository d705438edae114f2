"""DIR/report.html for `preftune eval`: one self-contained page (no scripts, no external assets).

Model output is untrusted text: everything shown is escaped (DESIGN.md section 2.8).
"""

from __future__ import annotations

import html
from typing import Any

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.text { white-space: pre-wrap; max-width: 30em; }
.bar { display: inline-block; height: 0.8em; background: #4a7bd0; vertical-align: middle; }
.note { color: #666; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else _e(pattern.format(value))


def _interval(values) -> str:
    return "-" if not values else f"[{values[0]:.3f}, {values[1]:.3f}]"


def render_report(result: dict[str, Any], generations: list[dict[str, Any]], max_examples: int = 20) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>preftune eval: {_e(result.get('model', 'policy'))} vs {_e(result.get('ref', 'reference'))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(result.get('model', 'policy'))} <span class='note'>vs</span> {_e(result.get('ref', 'reference'))}</h1>",
        f"<p>{_e(result.get('n_prompts', 0))} prompts from {_e(result.get('prompts', '-'))}, "
        f"{_e(result.get('samples_per_prompt', 1))} sample(s) each.</p>",
    ]
    parts.append(_judges_table(result))
    if result.get("gold_gap"):
        parts.append("<h2>Proxy against gold</h2><table><tr><th>proxy</th><th>gold</th><th>win-rate gap</th>"
                     "<th>proxy effect</th><th>gold effect</th><th>effect gap</th></tr>")  # fmt: skip
        for proxy, gap in result["gold_gap"].items():
            parts.append(
                f"<tr><td>{_e(proxy)}</td><td>{_e(gap['gold'])}</td><td>{_num(gap['win_rate_gap'], '{:+.3f}')}</td>"
                f"<td>{_num(gap['proxy_effect'], '{:+.3f}')}</td><td>{_num(gap['gold_effect'], '{:+.3f}')}</td>"
                f"<td>{_num(gap['effect_gap'], '{:+.3f}')}</td></tr>"
            )
        parts.append("</table><p class='note'>Effects are (policy mean - reference mean) / reference std. "
                     "A positive gap: the proxy overstates the improvement.</p>")  # fmt: skip
    kl = result.get("kl")
    if kl:
        parts.append("<h2>KL(&pi; || &pi;<sub>ref</sub>)</h2>")
        if kl.get("mean") is None:
            parts.append(f"<p class='note'>{_e(kl.get('note', 'not computed'))}</p>")
        else:
            parts.append(f"<p>{kl['mean']:.4f} nats per completion, 95% CI {_interval(kl['ci95'])}, "
                         f"from {_e(kl['n'])} policy samples at temperature {_e(kl.get('temperature'))}.</p>")  # fmt: skip
            if kl.get("note"):
                parts.append(f"<p class='note'>{_e(kl['note'])}</p>")
    length = result.get("length")
    if length and length.get("policy"):
        parts.append("<h2>Completion length (tokens)</h2><table><tr><th></th>"
                     + "".join(f"<th>{k}</th>" for k in length["policy"]) + "<th>ends with EOS</th></tr>")  # fmt: skip
        for side, key, eos in (
            ("policy", "policy", "policy_eos_fraction"),
            ("reference", "reference", "ref_eos_fraction"),
        ):
            parts.append(f"<tr><th>{side}</th>" + "".join(f"<td>{v:.1f}</td>" for v in length[key].values())
                         + f"<td>{_num(length.get(eos), '{:.0%}')}</td></tr>")  # fmt: skip
        parts.append("</table>")
    if length and not length.get("policy"):
        parts.append(f"<p>Mean length ({_e(length.get('unit', ''))}): policy {_num(length.get('policy_mean'), '{:.1f}')}, "
                     f"reference {_num(length.get('ref_mean'), '{:.1f}')}.</p>")  # fmt: skip
    if result.get("human"):
        human = result["human"]
        parts.append(f"<h2>Human evaluation</h2><p>Project {_e(human.get('project'))} in {_e(human.get('db'))}: "
                     f"{_e(human.get('items'))} items.</p>")  # fmt: skip
    if generations:
        parts.append(_examples(generations[:max_examples]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _judges_table(result: dict[str, Any]) -> str:
    rows = ["<h2>Win rate against the reference</h2><table><tr><th>judge</th><th>win rate</th><th>95% CI</th>"
            "<th>wins / ties / losses</th><th>LC win rate</th><th>LC 95% CI</th><th>policy mean</th><th>ref mean</th>"
            "<th>r(score, length), policy</th></tr>"]  # fmt: skip
    for name, entry in result.get("judges", {}).items():
        corr = ((entry.get("reward_length_corr") or {}).get("policy") or {}).get("pearson")
        label = _e(name) + (" <b>(gold)</b>" if name == result.get("gold") else "")
        width = int(round(100 * entry["win_rate"]))
        rows.append(
            f"<tr><td>{label}</td><td><span class='bar' style='width:{width}px'></span> {entry['win_rate']:.3f}</td>"
            f"<td>{_interval(entry['ci95'])}</td><td>{_e(entry.get('wins', '-'))} / {_e(entry['ties'])} / "
            f"{_e(entry.get('losses', '-'))}</td><td>{_num(entry.get('lc_win_rate'))}</td><td>{_interval(entry.get('lc_ci95'))}</td>"
            f"<td>{_num(entry.get('policy_mean'))}</td><td>{_num(entry.get('ref_mean'))}</td><td>{_num(corr, '{:+.2f}')}</td></tr>"
        )
    rows.append("</table><p class='note'>Ties count half. The CI is Wilson's over prompts. The length-controlled "
                "win rate is the logistic fit's win rate at equal length (Dubois et al. 2024).</p>")  # fmt: skip
    if any(name.removeprefix("judge:") == "kid" for name in result.get("judges", {})):
        from ..judges.kid import JUDGE_NOTE  # what the gold judge measures, and what it cannot

        rows.append(f"<p class='note' id='kid-judge-note'>{_e(JUDGE_NOTE)}</p>")
    return "\n".join(rows)


def _examples(generations: list[dict[str, Any]]) -> str:
    rows = [
        "<h2>Examples</h2><table><tr><th>prompt</th><th>policy</th><th>reference</th><th>scores (policy / reference)</th></tr>"
    ]
    for row in generations:
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in row["prompt"])
        scores = "<br>".join(
            f"{_e(k)}: {v['policy']:.3f} / {v['reference']:.3f}" for k, v in row.get("scores", {}).items()
        )
        rows.append(f"<tr><td class='text'>{_e(prompt)}</td><td class='text'>{_e(row['policy'])}</td>"
                    f"<td class='text'>{_e(row['reference'])}</td><td>{scores}</td></tr>")  # fmt: skip
    rows.append("</table>")
    return "\n".join(rows)
