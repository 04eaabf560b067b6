"""Self-contained HTML reports of training runs: learning curves as embedded PNGs, a table, example completions.

Two kinds of page, both one file with no network access (plots are PNGs embedded as ``data:`` URIs, no script):

- :func:`write_run_report`: the ``report.html`` every training command writes into its own run directory at the
  end of the run, from the run's ``config.json``, ``metrics.jsonl`` and ``example.json`` (when the trainer left
  one): what was trained, one small plot per metric logged over steps (grouped by namespace), a table of every
  metric, the example completion coloured by segment advantage. A report that cannot be written is a warning,
  never a failed run.
- :func:`write_report`: ``segrl quickstart``'s comparison of several runs (held-out accuracy against generated
  tokens and wall time); it reads the run directories and never writes into them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from segrl.errors import UserError  # noqa: E402
from segrl.files import write_text_atomic  # noqa: E402

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
RUN_REPORT = "report.html"

logger = logging.getLogger(__name__)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``; a torn last line (a run killed mid-write), or any other line that
    is not a JSON object, is skipped."""
    return _read_metrics_counted(run_dir)[0]


def _read_metrics_counted(run_dir: str | Path) -> tuple[list[dict], int]:
    """:func:`read_metrics` and the number of non-blank lines it skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"No metrics.jsonl in {run_dir}")
    records, skipped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError, a 5,000-digit number, nesting too deep
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif line.strip():
            skipped += 1
    return records, skipped


def eval_curve(records: list[dict], x: str, y: str = "eval/accuracy") -> tuple[list[float], list[float]]:
    """(x, y) points of the evaluation records."""
    points = [(r[x], r[y]) for r in records if y in r and x in r]
    return [p[0] for p in points], [p[1] for p in points]


def _png(fig, tight: bool = True) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight" if tight else None)
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


# The report of one run: report.html in its run directory.

#: Fields of a metrics record that are bookkeeping, not metrics.
NOT_METRICS = frozenset({"step", "wall_seconds", "epoch"})
#: The namespace of metrics without one (``loss``, ``reward``, ``grad_norm``, ...).
TOP_LEVEL = ""
#: Trainer fields shown in the header when the run's configuration has them (the rest is in "Full configuration").
KEY_TRAINER_FIELDS = (
    "learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
    "num_generations", "max_completion_length", "max_length", "temperature", "beta", "epsilon", "loss_type", "seed",
    "spo_mode", "partition", "num_mc_samples", "cutpoint_threshold", "cutpoint_interval", "segment_length",
    "tree_branching", "reward_model", "normalizer", "advantage_estimator", "kl_coef", "critic", "variant",
    "center_rewards_coefficient", "bf16", "use_vllm",
)
#: SPO fields that the run's mode (and partition) does not use.
_OTHER_SPO_MODE = {"chain": {"tree_branching"}, "tree": {"num_mc_samples", "cutpoint_interval", "partition"}}
#: Fields of config.json shown elsewhere in the header (every other top-level field is shown as it is).
_SHOWN_ELSEWHERE = frozenset({"method", "run", "trainer", "versions", "git_commit"})
PLOT_COLUMNS = 4
#: At most this many metrics are plotted (the table lists all), and at most this many points per curve.
MAX_PLOTTED_METRICS = 240
MAX_POINTS = 4000


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float(value) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond float's range
        return math.inf if value > 0 else -math.inf


def metric_namespace(name: str) -> str:
    """``"segments"`` for ``segments/mean_length``; ``"eval"`` also for transformers' ``eval_loss``; "" for
    ``loss``."""
    if "/" in name:
        return name.split("/", 1)[0]
    if name.startswith("eval_"):
        return "eval"
    return TOP_LEVEL


def metric_series(records: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """Every numeric metric of ``records`` as ``(steps, values)``, in order of first appearance; values may be NaN or
    infinite. Evaluation records (those with ``eval/*`` or ``eval_*`` fields) are their own series: such a record
    gives only its evaluation metrics, not the fields it repeats from training (``tokens/generated``)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        step = record.get("step")
        if not _number(step):
            continue
        evaluation = any(metric_namespace(name) == "eval" for name in record)
        for name, value in record.items():
            if name in NOT_METRICS or not _number(value) or (evaluation and metric_namespace(name) != "eval"):
                continue
            steps, values = series.setdefault(name, ([], []))
            steps.append(_as_float(step))
            values.append(_as_float(value))
    return series


def group_by_namespace(series: dict[str, tuple]) -> dict[str, dict[str, tuple]]:
    """``series`` grouped by :func:`metric_namespace`: top-level metrics first, then ``eval``, then the others in
    order of first appearance."""
    groups: dict[str, dict[str, tuple]] = {}
    for name, points in series.items():
        groups.setdefault(metric_namespace(name), {})[name] = points
    order = sorted(groups, key=lambda namespace: (namespace != TOP_LEVEL, namespace != "eval"))  # stable
    return {namespace: groups[namespace] for namespace in order}


def _finite_points(steps: list[float], values: list[float]) -> tuple[list[float], list[float]]:
    """The finite points, thinned to at most :data:`MAX_POINTS` (evenly, keeping the last)."""
    points = [(x, y) for x, y in zip(steps, values) if math.isfinite(x) and math.isfinite(y)]
    if len(points) > MAX_POINTS:
        stride = math.ceil(len(points) / MAX_POINTS)
        points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    return [p[0] for p in points], [p[1] for p in points]


def plot_metrics(series: dict[str, tuple[list[float], list[float]]], strip: str = "") -> str:
    """Base64 PNG of one small plot per metric against step, :data:`PLOT_COLUMNS` to a row; ``strip`` is removed
    from the front of each title (the namespace, named above the figure). NaN and infinite values are left out."""
    names = list(series)
    columns = min(PLOT_COLUMNS, len(names))
    rows = math.ceil(len(names) / columns)
    width, height = 3.1 * columns, 2.2 * rows
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    # a fixed layout in inches: matplotlib's tight layout costs more than drawing (seconds for a few dozen plots)
    fig.subplots_adjust(left=0.55 / width, right=1 - 0.15 / width, bottom=0.4 / height, top=1 - 0.3 / height,
                        wspace=0.55, hspace=0.75)
    try:
        for ax in axes.flat[len(names):]:
            ax.axis("off")
        for ax, name in zip(axes.flat, names):
            title = name[len(strip):] if strip and name.startswith(strip) and name != strip else name
            title = title if len(title) <= 42 else title[:41] + "…"
            ax.set_title(title, fontsize=8, parse_math=False)  # a metric name is data: no mathtext
            steps, values = _finite_points(*series[name])
            colour = COLOURS[1] if metric_namespace(name) == "eval" else COLOURS[0]
            if steps:
                ax.plot(steps, values, color=colour, lw=1, marker="o" if len(steps) <= 40 else None, ms=2.5)
            else:
                ax.text(0.5, 0.5, "no finite value", ha="center", va="center", transform=ax.transAxes, fontsize=8,
                        color="#888")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # steps
            ax.tick_params(labelsize=7)
            ax.xaxis.get_offset_text().set_fontsize(7)
            ax.yaxis.get_offset_text().set_fontsize(7)
            ax.set_xlabel("step", fontsize=7)
            ax.grid(alpha=0.3)
        return _png(fig, tight=False)
    finally:
        plt.close(fig)


def _fmt(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def metrics_table(series: dict[str, tuple[list[float], list[float]]]) -> str:
    """HTML table of every metric: how many values, the first, the last, the smallest and the largest finite one."""
    rows = []
    for name, (_, values) in series.items():
        finite = [v for v in values if math.isfinite(v)]
        low, high = (_fmt(min(finite)), _fmt(max(finite))) if finite else ("–", "–")
        rows.append(f'<tr><td class="name">{html.escape(name)}</td><td>{len(values):,}</td><td>{_fmt(values[0])}</td>'
                    f"<td>{_fmt(values[-1])}</td><td>{low}</td><td>{high}</td></tr>")
    return ("<table><tr><th>metric</th><th>values</th><th>first</th><th>last</th><th>min</th><th>max</th></tr>"
            + "".join(rows) + "</table>")


def _read_config(run_dir: Path) -> tuple[dict, str]:
    """``(config.json's object, "")``, or ``({}, why there is none)``."""
    path = run_dir / "config.json"
    if not path.is_file():
        return {}, "The run directory has no config.json."
    try:
        config = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (ValueError, RecursionError) as err:
        return {}, f"config.json could not be read ({type(err).__name__}: {err})."
    if not isinstance(config, dict):
        return {}, "config.json does not hold a JSON object."
    return config, ""


def _shown(value, limit: int = 300) -> str:
    """A configuration value as escaped HTML: strings as they are, anything else as JSON, cut at ``limit``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return html.escape(text if len(text) <= limit else text[: limit - 1] + "…")


def run_title(config: dict, run_dir: Path) -> str:
    """``segrl train spo (tree): <run directory name>`` and the like (plain text)."""
    method = config.get("method")
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    if method == "remedy":
        command = "segrl remedy train"
    elif isinstance(method, str):
        command = f"segrl train {method}"
        if isinstance(trainer.get("spo_mode"), str) and method == "spo":
            command += f" ({trainer['spo_mode']})"
    else:
        command = "segrl training run"
    return f"{command}: {run_dir.resolve().name}"


def run_summary(config: dict, records: list[dict]) -> str:
    """HTML table of what was trained: method, model, data, the run's arguments, the key trainer fields, other
    recorded facts (pairs, threshold), the extent of the run, package versions and the git commit."""
    run = config.get("run") if isinstance(config.get("run"), dict) else {}
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    facts: list[tuple[str, object]] = []
    if "method" in config:
        facts.append(("method", config["method"]))
    for name in ("model", "task", "train_file", "eval_file"):
        if run.get(name) is not None:
            facts.append((name, run[name]))
    if config.get("method") == "remedy" and not run.get("train_file") and run.get("year") is not None:
        facts.append(("data", f"toymt {run['year']}"))
    unused = {"model", "task", "train_file", "eval_file"}
    if config.get("method") == "remedy" and run.get("train_file"):
        unused |= {"year", "num_sources"}  # the toymt ratings' fields: a file was given instead
    if run.get("use_peft") is False:
        unused |= {name for name in run if name.startswith("lora_")}
    facts += [(f"--{name}", value) for name, value in run.items() if value is not None and name not in unused]
    hidden = {"num_train_epochs"} if _number(trainer.get("max_steps")) and trainer["max_steps"] > 0 else set()
    if config.get("method") == "spo":  # the other SPO mode's fields
        hidden |= _OTHER_SPO_MODE.get(trainer.get("spo_mode"), set())
        if trainer.get("spo_mode") == "chain" and trainer.get("partition") != "fixed":
            hidden.add("segment_length")
    for name in KEY_TRAINER_FIELDS:
        if trainer.get(name) is not None and name not in hidden:
            facts.append((f"--{name}", trainer[name]))
    facts += [(name, value) for name, value in config.items() if name not in _SHOWN_ELSEWHERE]
    steps = [r["step"] for r in records if _number(r.get("step"))]
    if steps:
        facts.append(("steps logged", f"{len(records):,} records up to step {max(steps):,}"))
    seconds = [r["wall_seconds"] for r in records if _number(r.get("wall_seconds"))]
    runtime = [r["train_runtime"] for r in records if _number(r.get("train_runtime"))]
    if seconds or runtime:
        last = (seconds or runtime)[-1]
        facts.append(("training seconds", f"{last:,.1f}" if abs(last) >= 10 else f"{last:.3g}"))
    tokens = [r["tokens/generated"] for r in records if _number(r.get("tokens/generated"))]
    if tokens:
        facts.append(("generated tokens", f"{int(tokens[-1]):,}"))
    versions = config.get("versions")
    if isinstance(versions, dict) and versions:
        facts.append(("versions", ", ".join(f"{name} {version}" for name, version in versions.items())))
    if "git_commit" in config:
        facts.append(("git commit", config["git_commit"] if config["git_commit"] else "unknown (not a git checkout)"))
    rows = "".join(f'<tr><th>{html.escape(name)}</th><td class="name">{_shown(value)}</td></tr>'
                   for name, value in facts)
    return f'<table class="facts">{rows}</table>'


def render_run_report(run_dir: str | Path) -> str:
    """The HTML of ``run_dir``'s report (see :func:`write_run_report`). Raises what reading and plotting raise."""
    run_dir = Path(run_dir)
    notes = []
    try:
        records, skipped = _read_metrics_counted(run_dir)
    except UserError as err:
        records, skipped = [], 0
        notes.append(f"{err}.")
    if skipped:
        notes.append(f"{skipped} line(s) of metrics.jsonl were not JSON objects and were skipped (a run killed "
                     "mid-write leaves a torn last line).")
    config, config_note = _read_config(run_dir)
    if config_note:
        notes.append(config_note)
    series = metric_series(records)
    over_steps = {name: points for name, points in series.items() if len(points[0]) >= 2}
    if len(over_steps) > MAX_PLOTTED_METRICS:
        notes.append(f"{len(over_steps)} metrics were logged over steps; the first {MAX_PLOTTED_METRICS} are plotted, "
                     "the table lists all.")
        over_steps = dict(list(over_steps.items())[:MAX_PLOTTED_METRICS])
    non_finite = sorted(name for name, (_, values) in series.items() if not all(math.isfinite(v) for v in values))
    if non_finite:
        notes.append(f"NaN or infinite values (left out of the plots) in: {', '.join(non_finite)}.")
    plots = []
    for namespace, group in group_by_namespace(over_steps).items():
        heading = f"{namespace}/*" if namespace else "top-level metrics (loss, reward, ...)"
        strip = f"{namespace}/" if namespace else ""
        plots.append(f'<h3 id="ns-{html.escape(namespace or "top")}">{html.escape(heading)}</h3>'
                     f'<img class="plots" alt="plots of {html.escape(heading)} against step" '
                     f'src="data:image/png;base64,{plot_metrics(group, strip)}">')
    example = ""
    example_file = run_dir / "example.json"
    if example_file.is_file():
        try:
            example = example_html(json.loads(example_file.read_text(encoding="utf-8", errors="replace")))
        except Exception as err:  # noqa: BLE001 - a damaged example must not cost the rest of the page
            example = f"<p>example.json could not be shown ({html.escape(f'{type(err).__name__}: {err}')}).</p>"
    title = run_title(config, run_dir)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 82rem; margin: 2rem auto; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td.name {{ text-align: left; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }}
table.facts th {{ text-align: left; font-weight: normal; color: #555; }}
img.plots {{ max-width: 100%; }} pre {{ white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.8rem; }}
.example {{ font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.8; }}
.cut {{ color: #999; }} .prompt, .note {{ color: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{run_summary(config, records)}
{"".join(f'<p class="note">{html.escape(note)}</p>' for note in notes)}
<details><summary>Full configuration (config.json)</summary>
<pre>{html.escape(json.dumps(config, indent=1, default=str))}</pre></details>
<h2>Metrics over steps</h2>
<p class="note">One plot per metric logged at two or more steps, grouped by namespace; evaluation records
(<code>eval/*</code>, <code>eval_*</code>) are their own series (red).</p>
{"".join(plots) or "<p>No metric was logged at two or more steps.</p>"}
<h2>Every metric</h2>
{metrics_table(series) if series else "<p>No metric was logged.</p>"}
{f"<h2>An example completion, coloured by segment advantage</h2>{example}" if example else ""}
</body></html>
"""


def write_run_report(run_dir: str | Path, main_process: bool = True) -> Path | None:
    """Write ``run_dir/report.html`` from the run's ``config.json``, ``metrics.jsonl`` and ``example.json`` and
    return its path; every training command calls it once, at the end of the run, after its other outputs.

    Only the main process writes: with ``main_process=False`` (the other processes of ``accelerate launch``) it does
    nothing. It never raises for a failure of its own (a damaged file, a plotting error, a full disk): it logs a
    warning and returns None, and the run's model and metrics stay as they are. The page is written atomically,
    so an earlier report is either replaced whole or left unchanged.
    """
    if not main_process:
        return None
    path = Path(run_dir) / RUN_REPORT
    try:
        return write_text_atomic(path, render_run_report(run_dir))
    except Exception as err:  # noqa: BLE001 - a report is never worth a failed run
        logger.warning("Could not write %s (%s: %s); the run's model and metrics are unaffected", path,
                       type(err).__name__, err)
        logger.debug("report failure", exc_info=True)
        return None
