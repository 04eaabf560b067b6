"""The ``segrl`` command line: thin wrappers that parse flags, build the pieces and call the library."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

from segrl.errors import UserError

app = typer.Typer(
    help="segrl: segment-level credit assignment for language-model alignment.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
status_console = Console(stderr=True)

DEFAULT_PROMPT = "Write a short review of a small Italian restaurant you visited, in three or four sentences."

ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Preset (smollm2-135m, tiny-<task>), local model directory, or hub id already in the local cache.",
    ),
]
CacheOption = Annotated[
    Optional[Path],
    typer.Option(help="Where presets are built and cached (default: $SEGRL_CACHE or ~/.cache/segrl).", show_default=False),
]


def user_errors(command):
    """Print a :class:`UserError` as one red line and exit with status 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as err:
            # Text, not markup: a message may hold brackets (a list, a regex) that rich would take for tags.
            status_console.print(Text.assemble(("error: ", "bold red"), str(err)), soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the library does.")] = False):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    from transformers.utils import logging as transformers_logging  # imported here to keep --help fast

    transformers_logging.disable_progress_bar()  # our own status lines say what is loading


@app.command()
@user_errors
def segment(
    model: ModelOption = "smollm2-135m",
    method: Annotated[str, typer.Option(help="entropy | uncertainty | cutpoint | fixed | delimiter.")] = "entropy",
    prompt: Annotated[Optional[str], typer.Option(help="The prompt (default: a built-in request for a restaurant review).", show_default=False)] = None,
    response: Annotated[
        Optional[str], typer.Option(help="The response to segment; omitted, the model samples one.", show_default=False)
    ] = None,
    input: Annotated[
        Optional[Path],
        typer.Option("--input", "-i", help="JSONL file of rows with 'prompt' and 'completion' (instead of flags).", show_default=False),
    ] = None,
    html: Annotated[Path, typer.Option(help="Where to write the HTML page.")] = Path("segments.html"),
    threshold: Annotated[float, typer.Option(help="entropy: a token with entropy > threshold (nats) opens a segment.")] = 2.0,
    tau_u: Annotated[float, typer.Option(help="uncertainty: entropy >= tau_u ends a segment (CARDS).")] = 3.0,
    min_len: Annotated[int, typer.Option(help="uncertainty: fewest tokens before a segment may end.")] = 4,
    max_len: Annotated[int, typer.Option(help="uncertainty: most tokens per segment.")] = 64,
    rho: Annotated[float, typer.Option(help="cutpoint: a token with probability < rho is a cutpoint (SPO).")] = 0.9,
    interval: Annotated[int, typer.Option(help="cutpoint: keep every interval-th cutpoint (SPO int5).")] = 5,
    temperature: Annotated[float, typer.Option(help="Sampling temperature: of the generated response and of cutpoint probabilities.")] = 1.0,
    length: Annotated[int, typer.Option(help="fixed: tokens per segment.")] = 16,
    delimiter: Annotated[str, typer.Option(help="delimiter: newline | blank_line | sentence.")] = "sentence",
    max_new_tokens: Annotated[int, typer.Option(help="Length cap of a generated response.")] = 96,
    seed: Annotated[int, typer.Option(help="Seed of the generated response (and of tiny-<task> presets).")] = 0,
    chat_template: Annotated[bool, typer.Option(help="Wrap the prompt in the model's chat template, if it has one.")] = True,
    cache_dir: CacheOption = None,
):
    """Cut responses into segments under a model; show them in colour and write an HTML page with token signals."""
    from segrl import view
    from segrl.files import read_jsonl, write_text_atomic
    from segrl.models import load_model

    if method not in view.METHODS:
        raise UserError(f"Unknown --method '{method}'; expected one of {', '.join(view.METHODS)}")
    if input is not None and (prompt is not None or response is not None):
        raise UserError("Give either --input or --prompt/--response, not both")
    if input is not None:
        rows = read_jsonl(input, {"prompt": str, "completion": str})
        items = [(row["prompt"], row["completion"]) for row in rows]
    else:
        items = [(prompt if prompt is not None else DEFAULT_PROMPT, response)]
    params = view.SegmentParams(
        threshold=threshold, tau_u=tau_u, min_len=min_len, max_len=max_len, rho=rho, interval=interval,
        temperature=temperature, length=length, delimiter=delimiter,
    )

    with status_console.status(f"Loading {model} ..."):
        policy, tokenizer = load_model(model, cache_dir=cache_dir, seed=seed)
    results = []
    for index, (item_prompt, item_response) in enumerate(items, start=1):
        if item_response is None:
            with status_console.status(f"Sampling a response from {model} ..."):
                item_response = view.generate_response(
                    policy, tokenizer, item_prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                    seed=seed, use_chat_template=chat_template,
                )
        try:
            result = view.segment_response(
                policy, tokenizer, item_prompt, item_response, method, params, use_chat_template=chat_template
            )
        except UserError as err:
            raise UserError(f"{input}, row {index}: {err}" if input is not None else str(err)) from None
        results.append(result)
        console.rule(f"[bold]{index}/{len(items)}[/] {view.summary(result)}")
        console.print(f"[dim]prompt:[/] {item_prompt}", highlight=False)
        console.print(view.render_terminal(result, colour=console.color_system is not None), highlight=False)
    write_text_atomic(html, view.render_html(results, title=f"segrl segment: {model}, {method}"))
    console.print(f"HTML page with per-token signals: [bold]{os.path.abspath(html)}[/]", highlight=False)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
@user_errors
def train(
    ctx: typer.Context,
    method: Annotated[str, typer.Argument(help="grpo (TRL's GRPO, the baseline) or spo (SPO-chain).")],
):
    """Train a policy on a built-in task with GRPO or SPO.

    Every other flag follows TRL's convention: --config run.yaml, then any field of the run (--task, --model,
    --train_examples, --eval_examples, --eval_every) or of GRPOConfig/SPOConfig (--max_steps, --learning_rate,
    --num_generations, --num_mc_samples, --use_prob_mask ...) as --name value. `segrl train spo --help` lists them.
    """
    import torch
    from trl import GRPOConfig, TrlParser

    from segrl.trainers.spo import SPOConfig
    from segrl.training import METHODS, RunArguments
    from segrl.training import train as run_training

    if method not in METHODS:
        raise UserError(f"Unknown method '{method}'; expected one of {', '.join(METHODS)}")
    parser = TrlParser((RunArguments, SPOConfig if method == "spo" else GRPOConfig), prog=f"segrl train {method}")
    args = list(ctx.args)
    if not torch.cuda.is_available():  # TRL's configs default to bf16, which a CPU-only run refuses or emulates slowly
        args = ["--use_cpu", "true", "--bf16", "false", *args]
    if "--output_dir" not in args and not any(a.startswith("--output_dir=") for a in args):
        args += ["--output_dir", f"runs/{method}"]
    try:
        run, config = parser.parse_args_and_config(args=args)
    except SystemExit as exit_:  # argparse already printed its usage or error message
        raise typer.Exit(0 if exit_.code in (0, None) else 2) from None
    out = run_training(method, run, config)
    console.print(f"Run written to [bold]{out}[/]: config.json, metrics.jsonl, final/", highlight=False)


@app.command()
@user_errors
def quickstart(
    output_dir: Annotated[Path, typer.Option(help="Where the runs and report.html go.")] = Path("runs/quickstart"),
    token_budget: Annotated[int, typer.Option(help="Generated tokens (policy + MC) per method.")] = 150_000,
    seed: Annotated[int, typer.Option(help="Seed of the preset, the data and sampling.")] = 0,
    eval_examples: Annotated[int, typer.Option(help="Held-out problems per evaluation.")] = 200,
    eval_every: Annotated[int, typer.Option(help="Evaluate every this many steps.")] = 5,
    model: Annotated[str, typer.Option(help="The policy every method starts from.")] = "tiny-arith",
    cache_dir: CacheOption = None,
):
    """GRPO vs SPO-chain vs SPO-tree on arith with the tiny preset at an equal generation budget; writes report.html."""
    from segrl.quickstart import quickstart as run_quickstart

    report = run_quickstart(output_dir, token_budget, seed, eval_examples, eval_every,
                            str(cache_dir) if cache_dir else None, model)
    console.print(f"Report: [bold]{os.path.abspath(report)}[/]", highlight=False)
