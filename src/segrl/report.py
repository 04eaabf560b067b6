"""Self-contained HTML reports of training runs: learning curves as embedded PNGs, a table, example completions.

A run is a directory written by :func:`segrl.training.train`; this module reads its ``metrics.jsonl`` (and
``example.json`` when the trainer left one) and never writes into it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from segrl.errors import UserError  # noqa: E402
from segrl.files import write_text_atomic  # noqa: E402

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``; a torn last line (a run killed mid-write) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"No metrics.jsonl in {run_dir}")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def eval_curve(records: list[dict], x: str, y: str = "eval/accuracy") -> tuple[list[float], list[float]]:
    """(x, y) points of the evaluation records."""
    points = [(r[x], r[y]) for r in records if y in r and x in r]
    return [p[0] for p in points], [p[1] for p in points]


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_accuracy(runs: dict[str, list[dict]], x: str, xlabel: str) -> str:
    """Base64 PNG of held-out sampled (solid) and greedy (dashed) accuracy against ``x``, one colour per run."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for (name, records), colour in zip(runs.items(), COLOURS):
        ax.plot(*eval_curve(records, x), marker="o", ms=3, color=colour, label=f"{name} (sampled)")
        ax.plot(*eval_curve(records, x, "eval/accuracy_greedy"), ls="--", color=colour, alpha=0.7,
                label=f"{name} (greedy)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def final_row(records: list[dict]) -> dict:
    """Numbers for the summary table: first and last evaluation, training steps, cost."""
    evals = [r for r in records if "eval/accuracy" in r]
    if not evals:
        raise UserError("The run has no evaluation record")
    first, last = evals[0], evals[-1]
    return {
        "steps": last["step"],
        "accuracy start": first["eval/accuracy"],
        "accuracy end": last["eval/accuracy"],
        "greedy start": first["eval/accuracy_greedy"],
        "greedy end": last["eval/accuracy_greedy"],
        "generated tokens": last.get("tokens/generated", 0),
        "train seconds": last["wall_seconds"],
    }


def example_html(example: dict) -> str:
    """One completion, each token coloured by its advantage (green > 0, red < 0, grey 0 or masked out)."""
    scale = max((abs(a) for a in example["advantages"]), default=1.0) or 1.0
    spans, previous = [], None
    for piece, segment, advantage in zip(example["pieces"], example["segment_ids"], example["advantages"]):
        if segment != previous and previous is not None:
            spans.append('<span class="cut">|</span>')
        previous = segment
        alpha = min(1.0, abs(advantage) / scale)
        colour = f"rgba(40,160,60,{alpha:.2f})" if advantage > 0 else f"rgba(210,50,50,{alpha:.2f})"
        if advantage == 0:
            colour = "#eee"
        spans.append(f'<span style="background:{colour}" title="segment {segment}, advantage {advantage:+.3f}">'
                     f"{html.escape(piece)}</span>")
    return (f'<p class="prompt">{html.escape(example["prompt"])}</p>'
            f'<div class="example">{"".join(spans)}</div>'
            f'<p class="note">Reward (SPO-tree: the segment\'s value V) {example["reward"]:.3g}. Green / red: the advantage of a token in the loss (before '
            f'whitening); grey: outside the loss (probability mask) or advantage 0; | marks a segment boundary; '
            f'hover for the numbers.</p>')


def write_report(path: str | Path, runs: dict[str, str | Path], title: str, intro: str = "") -> Path:
    """Write an HTML report comparing ``runs`` (name -> run directory) and return its path."""
    records = {name: read_metrics(run_dir) for name, run_dir in runs.items()}
    table_rows = {name: final_row(recs) for name, recs in records.items()}
    columns = list(next(iter(table_rows.values())))
    table = "<table><tr><th>method</th>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    for name, row in table_rows.items():
        cells = "".join(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{v:,}</td>" for v in row.values())
        table += f"<tr><td>{html.escape(name)}</td>{cells}</tr>"
    table += "</table>"
    examples = ""
    for name, run_dir in runs.items():
        example_file = Path(run_dir) / "example.json"
        if example_file.is_file():
            examples += f"<h3>{html.escape(name)}</h3>" + example_html(json.loads(example_file.read_text()))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 62rem; margin: 2rem auto; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
.example {{ font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.8; }}
.cut {{ color: #999; }} .prompt, .note {{ color: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(intro)}</p>
<h2>Held-out accuracy against generated tokens (policy + Monte Carlo rollouts)</h2>
<img alt="accuracy vs generated tokens" src="data:image/png;base64,{plot_accuracy(records, "tokens/generated", "generated tokens")}">
<h2>Held-out accuracy against training wall time</h2>
<img alt="accuracy vs wall time" src="data:image/png;base64,{plot_accuracy(records, "wall_seconds", "training seconds (evaluation excluded)")}">
<h2>Final numbers</h2>
{table}
<h2>An example completion, coloured by segment advantage</h2>
{examples or "<p>No run left an example.</p>"}
</body></html>
"""
    return write_text_atomic(path, page)
