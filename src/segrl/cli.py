"""The ``segrl`` command line: thin wrappers that parse flags, build the pieces and call the library."""

from __future__ import annotations

import functools
import logging
import math
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
    typer.Option("--cache-dir", "--cache_dir",
                 help="Where presets are built and cached (default: $SEGRL_CACHE or ~/.cache/segrl).", show_default=False),
]


def user_errors(command):
    """Print a :class:`UserError` as one red line and exit with status 2, without a traceback; print an ``OSError``
    that escaped the readers and writers (a full disk, a missing directory) as one line too, with status 1 (the
    traceback goes to the log at DEBUG level)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as err:
            # Text, not markup: a message may hold brackets (a list, a regex) that rich would take for tags.
            status_console.print(Text.assemble(("error: ", "bold red"), str(err)), soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as err:
            logging.getLogger("segrl").debug("%s failed", command.__name__, exc_info=True)
            reason = err.strerror or str(err) or type(err).__name__
            where = f": {err.filename}" if err.filename else ""
            status_console.print(Text.assemble(("error: ", "bold red"), f"{reason}{where}"), soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _finite(**values: float | None) -> None:
    """Raise :class:`UserError` for a float option that is NaN or infinite."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the library does.")] = False):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    from transformers.utils import logging as transformers_logging  # imported here to keep --help fast

    transformers_logging.disable_progress_bar()  # our own status lines say what is loading
    from transformers import dynamic_module_utils

    # Never run code shipped with a model: segrl passes trust_remote_code=False where it loads one, and with this a
    # load that forgets it fails instead of asking "Do you wish to run the custom code? [y/N]" on stdin.
    dynamic_module_utils.TIME_OUT_REMOTE_CODE = 0


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
    tau_u: Annotated[float, typer.Option("--tau-u", "--tau_u", help="uncertainty: entropy >= tau_u ends a segment (CARDS).")] = 3.0,
    min_len: Annotated[int, typer.Option("--min-len", "--min_len", help="uncertainty: fewest tokens before a segment may end.")] = 4,
    max_len: Annotated[int, typer.Option("--max-len", "--max_len", help="uncertainty: most tokens per segment.")] = 64,
    rho: Annotated[float, typer.Option(help="cutpoint: a token with probability < rho is a cutpoint (SPO).")] = 0.9,
    interval: Annotated[int, typer.Option(help="cutpoint: keep every interval-th cutpoint (SPO int5).")] = 5,
    temperature: Annotated[float, typer.Option(help="Sampling temperature: of the generated response and of cutpoint probabilities.")] = 1.0,
    length: Annotated[int, typer.Option(help="fixed: tokens per segment.")] = 16,
    delimiter: Annotated[str, typer.Option(help="delimiter: newline | blank_line | sentence.")] = "sentence",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "--max_new_tokens", help="Length cap of a generated response.")] = 96,
    seed: Annotated[int, typer.Option(help="Seed of the generated response (and of tiny-<task> presets).")] = 0,
    chat_template: Annotated[bool, typer.Option(
        "--chat-template/--no-chat-template", "--chat_template/--no_chat_template",
        help="Wrap the prompt in the model's chat template, if it has one.")] = True,
    cache_dir: CacheOption = None,
):
    """Cut responses into segments under a model; show them in colour and write an HTML page with token signals."""
    from segrl import view
    from segrl.files import read_jsonl, write_text_atomic
    from segrl.models import load_model

    if method not in view.METHODS:
        raise UserError(f"Unknown --method '{method}'; expected one of {', '.join(view.METHODS)}")
    _finite(threshold=threshold, tau_u=tau_u, rho=rho, temperature=temperature)
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
        console.print(Text.assemble(("prompt: ", "dim"), view.visible(item_prompt)), highlight=False)  # never markup
        console.print(view.render_terminal(result, colour=console.color_system is not None), highlight=False)
    write_text_atomic(html, view.render_html(results, title=f"segrl segment: {model}, {method}"))
    console.print(f"HTML page with per-token signals: [bold]{os.path.abspath(html)}[/]", highlight=False)


def _print_once(*args, **kwargs) -> None:
    """Print on the main process only (``accelerate launch`` / torchrun set RANK in each process)."""
    if os.environ.get("RANK", "0") == "0":
        console.print(*args, **kwargs)


def _parse_trl(args: list[str], run_class, config_class, prog: str, output_dir: str):
    """Parse TRL-style flags (``--config run.yaml``, ``--name value``) into (run arguments, trainer config).

    segrl's defaults, which a ``--config`` file and then the flags override: ``--output_dir`` ``output_dir``; seed 0
    for every command (TRL's is 42), which also names the tiny-<task> preset, so that `segrl train` after
    `segrl quickstart` or `prepare-segments` uses the same one; on a CPU-only machine ``--use_cpu true --bf16 false``
    (TRL's configs default to bf16, which a CPU refuses or emulates slowly)."""
    import torch
    import yaml
    from trl import TrlParser

    parser = TrlParser((run_class, config_class), prog=prog)
    parser.set_defaults(output_dir=output_dir, seed=0)
    if not torch.cuda.is_available():
        parser.set_defaults(use_cpu=True, bf16=False)
    try:
        parsed = parser.parse_args_and_config(args=args)
    except SystemExit as exit_:  # argparse already printed its usage or error message
        raise typer.Exit(0 if exit_.code in (0, None) else 2) from None
    except UserError:
        raise
    except (ValueError, TypeError, OSError, ImportError) as err:  # unknown flags, bad --config YAML, config checks
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "not used by the HfArgumentParser" in reason:
            reason = "unknown flag(s) " + reason.split(":", 1)[1].strip() + f"; `{prog} --help` lists them"
        raise UserError(f"{prog}: {reason}") from None
    except yaml.YAMLError as err:  # --config is not YAML
        raise UserError(f"{prog}: --config is not valid YAML ({' '.join(str(err).split())})") from None
    if any(getattr(part, "trust_remote_code", False) for part in parsed):  # TRL's configs have the flag
        raise UserError(f"{prog}: --trust_remote_code is not supported: segrl never runs code shipped with a model "
                        "(it loads safetensors weights into transformers' own classes)")
    for part in parsed:
        for name, value in vars(part).items():
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise UserError(f"{prog}: --{name} must be a finite number, got {value}")
    return parsed


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
@user_errors
def train(
    ctx: typer.Context,
    method: Annotated[str, typer.Argument(
        help="grpo (TRL's GRPO, the baseline), spo (SPO chain/tree), dense (RL on dense rewards of a segment reward "
             "model: PPO with a value model or critic-free), drlc (dense rewards from a critic's spans: --critic "
             "lexicon|self|MODEL), rm (train a segment reward model), dpo (TRL's DPO on prompt/chosen/rejected pairs) "
             "or densedpo (DenseDPO on aligned pairs with segment labels).")],
):
    """Train a policy on a built-in task (grpo, spo, dense, drlc), a segment reward model on prepared pairs (rm), or
    a policy on preference pairs (dpo, densedpo: --train_file).

    Every other flag follows TRL's convention: --config run.yaml, then any field of the run (--task, --model,
    --train_examples, ...; for rm: --train_file, --eval_file, --model) or of the trainer's config (GRPOConfig,
    SPOConfig, DenseRewardConfig, DRLCConfig, SegmentRewardConfig, DPOConfig, DenseDPOConfig) as --name value.
    `segrl train METHOD --help` lists them.
    With dense and a --reward_model, the task's own reward is only logged unless --reward_weights says otherwise.
    """
    from trl import DPOConfig, GRPOConfig

    from segrl.preference_training import PreferenceRunArguments

    from segrl.reward_training import RewardRunArguments
    from segrl.trainers.dense import DenseRewardConfig
    from segrl.trainers.dense_dpo import DenseDPOConfig
    from segrl.trainers.drlc import DRLCConfig
    from segrl.trainers.segment_rm import SegmentRewardConfig
    from segrl.trainers.spo import SPOConfig
    from segrl.training import METHODS, RunArguments

    configs = {"grpo": GRPOConfig, "spo": SPOConfig, "dense": DenseRewardConfig, "drlc": DRLCConfig,
               "rm": SegmentRewardConfig, "dpo": DPOConfig, "densedpo": DenseDPOConfig}
    if method in ("--help", "-h"):  # the flags belong to each method's parser; this is the command's own help
        console.print(ctx.get_help())
        raise typer.Exit(0)
    if method not in configs:
        raise UserError(f"Unknown method '{method}'; expected one of {', '.join(configs)}")
    run_class = {"rm": RewardRunArguments, "dpo": PreferenceRunArguments,
                 "densedpo": PreferenceRunArguments}.get(method, RunArguments)
    run, config = _parse_trl(list(ctx.args), run_class, configs[method], f"segrl train {method}", f"runs/{method}")
    if method == "rm":
        from segrl.reward_training import train_reward_model

        out = train_reward_model(run, config)
        _print_once(f"Reward model written to [bold]{out / 'final'}[/] (config.json, metrics.jsonl, report.html "
                    "beside it)", highlight=False)
        return
    if method in ("dpo", "densedpo"):
        from segrl.preference_training import train_preference

        out = train_preference(method, run, config)
        _print_once(f"Policy written to [bold]{out / 'final'}[/] (config.json, metrics.jsonl, report.html beside "
                    "it)", highlight=False)
        return
    from segrl.training import train as run_training

    assert method in METHODS
    out = run_training(method, run, config)
    _print_once(f"Run written to [bold]{out}[/]: config.json, metrics.jsonl, report.html, final/", highlight=False)


@app.command("prepare-segments")
@user_errors
def prepare_segments(
    input: Annotated[str, typer.Argument(help="Preference data: a JSONL file of prompt/chosen/rejected rows, or a "
                                              "`datasets` name or path available offline.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the prepared JSONL goes.")],
    model: ModelOption = "tiny-facts",
    threshold: Annotated[float, typer.Option(help="Entropy threshold c (nats): a token drawn from a distribution "
                                                  "with entropy > c opens a segment (paper: 1.75 or 2.0).")] = 2.0,
    max_length: Annotated[Optional[int], typer.Option("--max-length", "--max_length", help="Skip pairs longer than this many tokens.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "--batch_size", help="Sequences per forward pass.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of tiny-<task> presets.")] = 0,
    cache_dir: CacheOption = None,
):
    """Add the reference model's entropy segments (and token ids) to preference pairs, for `segrl train rm`."""
    from rich.progress import Progress

    from segrl.reward_training import prepare

    with Progress(console=status_console, transient=True) as progress:
        task = progress.add_task("Segmenting responses", total=None)
        summary = prepare(input, output, model, threshold, max_length=max_length, batch_size=batch_size,
                          cache_dir=str(cache_dir) if cache_dir else None, seed=seed,
                          progress=lambda done, total: progress.update(task, completed=done, total=total))
    skipped = ", ".join(f"{n} {reason}" for reason, n in summary["skipped"].items()) or "none"
    console.print(f"Wrote {summary['written']} of {summary['rows']} pairs to [bold]{output}[/] "
                  f"({summary['segments_per_response']:.1f} segments per response; skipped: {skipped})",
                  highlight=False)


@app.command("fit-normalizer")
@user_errors
def fit_normalizer_command(
    reward_model: Annotated[str, typer.Argument(help="Directory of a reward model (`segrl train rm`'s final/).")],
    data: Annotated[Path, typer.Argument(help="Prepared held-out JSONL (`segrl prepare-segments`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the normaliser's JSON goes.")],
    batch_size: Annotated[int, typer.Option("--batch-size", "--batch_size", help="Pairs per forward pass.")] = 32,
    sigma_floor: Annotated[Optional[float], typer.Option(
        "--sigma-floor", "--sigma_floor", help="Lower bound of σ(p) (default: 0.1 x the std of all fitted rewards).",
        show_default=False)] = None,
):
    """Fit the reward normaliser: location-aware μ(p), σ(p) by Huber regression on ln p (global mean/std for bandit)."""
    from segrl.reward_training import fit_normalizer

    _finite(sigma_floor=sigma_floor)
    with status_console.status("Scoring the held-out responses ..."):
        summary = fit_normalizer(reward_model, str(data), output, batch_size, sigma_floor)
    fitted = ", ".join(f"{k}={v:.4g}" for k, v in summary["normalizer"].items() if isinstance(v, float))
    console.print(f"{summary['variant']} reward model, {summary['segments']} segments of {summary['responses']} "
                  f"responses ({summary['skipped_responses']} skipped): {fitted} -> [bold]{output}[/]",
                  highlight=False)


@app.command()
@user_errors
def quickstart(
    output_dir: Annotated[Path, typer.Option("--output-dir", "--output_dir", help="Where the runs and report.html go.")] = Path("runs/quickstart"),
    token_budget: Annotated[int, typer.Option("--token-budget", "--token_budget", help="Generated tokens (policy + MC) per method.")] = 150_000,
    seed: Annotated[int, typer.Option(help="Seed of the preset, the data and sampling.")] = 0,
    eval_examples: Annotated[int, typer.Option("--eval-examples", "--eval_examples", help="Held-out problems per evaluation.")] = 200,
    eval_every: Annotated[int, typer.Option("--eval-every", "--eval_every", help="Evaluate every this many steps.")] = 5,
    model: Annotated[str, typer.Option(help="The policy every method starts from.")] = "tiny-arith",
    cache_dir: CacheOption = None,
):
    """GRPO vs SPO-chain vs SPO-tree on arith with the tiny preset at an equal generation budget; writes report.html."""
    from segrl.quickstart import quickstart as run_quickstart

    report = run_quickstart(output_dir, token_budget, seed, eval_examples, eval_every,
                            str(cache_dir) if cache_dir else None, model)
    console.print(f"Report: [bold]{os.path.abspath(report)}[/]", highlight=False)


@app.command()
@user_errors
def decode(
    method: Annotated[str, typer.Option(help="cards (cascade reward sampling), bon (Best-of-N) or vanilla.")] = "cards",
    model: ModelOption = "smollm2-135m",
    reward: Annotated[Optional[str], typer.Option(
        help="Reward source: a task name (its reward function, e.g. sentiment), package.module:function (TRL's "
             "reward signature), or a reward model directory (sequence classifier, or a segrl segment RM). "
             "Default: the task's reward.", show_default=False)] = None,
    prompts: Annotated[Optional[Path], typer.Option(
        help="JSONL file of rows with a 'prompt' (text or chat messages); instead of --task.", show_default=False)] = None,
    task: Annotated[str, typer.Option(help="Built-in task whose test prompts are decoded when --prompts is not given.")] = "sentiment",
    num_prompts: Annotated[int, typer.Option(
        "--num-prompts", "--num_prompts",
        help="How many task prompts (or the first N of --prompts; 0: all of the file).")] = 16,
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL of responses; the totals go to <stem>.summary.json.")] = Path("runs/decode/decode.jsonl"),
    n: Annotated[int, typer.Option("--n", "--num-generations", "--num_generations",
                                   help="bon: samples per prompt (TRL's num_generations).")] = 4,
    target_reward: Annotated[Optional[float], typer.Option(
        "--target-reward", "--target_reward",
        help="cards: r*, the target reward. Default: mean + 0.5 std of vanilla rewards on the first 16 prompts.",
        show_default=False)] = None,
    alpha: Annotated[float, typer.Option(help="cards: r0 = (1 - alpha) RM(x) + alpha r*.")] = 0.5,
    beta: Annotated[float, typer.Option(help="cards: soft acceptance min(1, exp((r - tau)/beta)).")] = 0.7,
    acceptance: Annotated[str, typer.Option(help="cards: soft or hard (r >= tau).")] = "soft",
    tau_u: Annotated[float, typer.Option("--tau-u", "--tau_u", help="cards: a segment ends before a token whose entropy is >= tau_u.")] = 3.0,
    max_rejections: Annotated[int, typer.Option(
        "--max-rejections", "--max_rejections",
        help="cards: after this many rejections in a row, take the best candidate.")] = 20,
    max_new_tokens: Annotated[int, typer.Option(
        "--max-new-tokens", "--max_new_tokens", "--max-completion-length", "--max_completion_length",
        help="Response length cap (L_max; TRL's max_completion_length).")] = 128,
    top_k: Annotated[int, typer.Option("--top-k", "--top_k", help="Sample from the top-k tokens.")] = 40,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    batch_size: Annotated[int, typer.Option("--batch-size", "--batch_size", help="cards: prompts decoded together; bon/vanilla: sequences.")] = 16,
    seed: Annotated[int, typer.Option(help="Seeds task prompts, sampling and acceptance.")] = 0,
    cache_dir: CacheOption = None,
):
    """Decode prompts with a reward source at decoding time: CARDS, Best-of-N or vanilla sampling.

    Writes one JSON line per prompt (text, reward, tokens, policy tokens sampled, RM calls, wall time) and a summary
    with the totals. Defaults: CARDS with smollm2-135m and VADER sentiment on 16 review openings.
    """
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from segrl.decoding.cards import CardsConfig
    from segrl.decoding.run import METHODS, estimate_target_reward, run
    from segrl.decoding.sampling import SamplingConfig
    from segrl.decoding.scorers import load_scorer
    from segrl.files import read_jsonl_numbered
    from segrl.models import load_model
    from segrl.tasks import get_task

    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if prompts is not None:
        rows = read_jsonl_numbered(prompts, {"prompt": object})
        for index, (line, row) in enumerate(rows, start=1):
            if not isinstance(row["prompt"], (str, list)):
                raise UserError(f"{prompts}, row {index} (line {line}): field 'prompt' should be text or a list of "
                                f"messages, got {type(row['prompt']).__name__}")
        texts = [row["prompt"] for _, row in rows][: num_prompts or None]
        reward = reward or task
    else:
        texts = [row["prompt"] for row in get_task(task).make_rows("test", num_prompts, seed)]
        reward = reward or task
    if not texts:
        raise UserError("no prompts to decode")
    torch.manual_seed(seed)
    with status_console.status(f"Loading {model} and the reward {reward} ..."):
        policy, tokenizer = load_model(model, cache_dir=cache_dir, seed=seed)
        scorer = load_scorer(reward, policy, tokenizer, device=policy.device, batch_size=batch_size)
    sampling = SamplingConfig(n=n if method == "bon" else 1, top_k=top_k, temperature=temperature,
                              max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    extra = {"model": model, "reward": reward, "prompts": str(prompts) if prompts else f"task {task} (test)"}
    config = sampling
    if method == "cards":
        if target_reward is None:
            with status_console.status("Estimating r* from vanilla samples ..."):
                target_reward, seen = estimate_target_reward(policy, tokenizer, scorer, texts, sampling)
            extra["target_reward_estimate"] = seen
            status_console.print(f"r* = {target_reward:.3f} (vanilla mean {seen['vanilla_mean']:.3f}, std "
                                 f"{seen['vanilla_std']:.3f} on {seen['calibration_prompts']} prompts)")
        config = CardsConfig(target_reward=target_reward, alpha=alpha, beta=beta, acceptance=acceptance, tau_u=tau_u,
                             max_new_tokens=max_new_tokens, max_rejections=max_rejections, top_k=top_k,
                             temperature=temperature, batch_size=batch_size, seed=seed)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    rewards: list[float] = []
    with Progress(*columns, console=status_console, transient=True) as bar:
        job = bar.add_task(f"{method} decoding", total=len(texts), info="")

        def progress(result, done, total):
            if result.reward is not None:
                rewards.append(result.reward)
            mean = f"mean reward {sum(rewards) / len(rewards):.3f}" if rewards else ""
            bar.update(job, completed=done, info=mean)

        summary = run(method, policy, tokenizer, scorer, texts, config, output, extra, progress)
    mean = summary["mean_reward"]
    console.print(
        f"{method}: {summary['prompts']} prompts ({summary['skipped']} skipped), mean reward "
        f"{'n/a' if mean is None else f'{mean:.3f}'}, {summary['policy_tokens']} policy tokens, "
        f"{summary['rm_calls']} RM calls, {summary['wall_time']:.1f} s -> [bold]{output}[/]", highlight=False)


remedy_app = typer.Typer(help="ReMedy: an MT metric trained as a pairwise reward model; train, score, meta-evaluate.",
                         no_args_is_help=True)
app.add_typer(remedy_app, name="remedy")


@remedy_app.command(
    "train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
@user_errors
def remedy_train(ctx: typer.Context):
    """Train a ReMedy model on rated translations (default: the toymt task's 2023 ratings, tiny-toymt backbone).

    Flags follow TRL's convention: any field of the run (--train_file, --year, --model, --test_fraction, --min_gap,
    --no_ref, --per_lp_calibration) or of RemedyConfig, TRL's RewardConfig (--learning_rate, --num_train_epochs,
    --center_rewards_coefficient 0.01, ...), as --name value. `segrl remedy train --help` lists them.
    """
    from segrl.remedy.training import RemedyRunArguments, train_remedy
    from segrl.trainers.remedy import RemedyConfig

    run, config = _parse_trl(list(ctx.args), RemedyRunArguments, RemedyConfig, "segrl remedy train", "runs/remedy")
    out = train_remedy(run, config)
    _print_once(f"ReMedy model written to [bold]{out / 'final'}[/] (config.json, metrics.jsonl, report.html beside "
                "it)", highlight=False)


@remedy_app.command("score")
@user_errors
def remedy_score(
    model: Annotated[str, typer.Option("--model", "-m", help="A ReMedy model directory (`segrl remedy train`'s final/).")],
    src: Annotated[Path, typer.Option(help="Source sentences, one per line.")],
    mt: Annotated[Path, typer.Option(help="Translations to score, one per line (as many as --src).")],
    lp: Annotated[str, typer.Option(help="Language pair, e.g. en-de.")],
    ref: Annotated[Optional[Path], typer.Option(help="References, one per line (reference-based models).")] = None,
    no_ref: Annotated[bool, typer.Option("--no-ref", "--no_ref", help="Score without references (reference-free models).")] = False,
    output_dir: Annotated[Path, typer.Option(
        "--output-dir", "--output_dir", "-o", help="Where scores.tsv and result.json go.")] = Path("runs/remedy-scores"),
    batch_size: Annotated[int, typer.Option("--batch-size", "--batch_size", help="Translations per forward pass.")] = 32,
):
    """Score translations: raw, sigmoid and calibrated scores per line (scores.tsv), the system score and a signature
    (result.json)."""
    from rich.progress import Progress

    from segrl.remedy.scoring import score_files

    if (ref is None) == (not no_ref):
        raise UserError("give either --ref FILE or --no-ref")
    with Progress(console=status_console, transient=True) as bar:
        job = bar.add_task("scoring", total=None)
        result = score_files(model, src, mt, lp, output_dir, ref=ref, batch_size=batch_size,
                             progress=lambda done: bar.update(job, completed=done))
    system = result["system_score"]
    console.print(f"{result['signature']}\nsystem score: raw {system['raw']:.4f}, sigmoid {system['sigmoid']:.4f}, "
                  f"calibrated {system['calibrated']:.4f} ({result['lines']} lines) -> [bold]{output_dir}[/]",
                  highlight=False)


@remedy_app.command("meta-eval")
@user_errors
def remedy_meta_eval(
    metric: Annotated[str, typer.Option("--metric", help="A ReMedy model directory, or a baseline: chrf, bleu.")],
    ratings: Annotated[Optional[Path], typer.Option(help="Human-rated translations (.jsonl/.tsv, as for train); "
                                                         "default: the toymt task's ratings of --year.")] = None,
    wmt_dir: Annotated[Optional[Path], typer.Option(
        "--wmt-dir", "--wmt_dir", help="An mt-metrics-eval data directory (WMT layout) instead of --ratings.")] = None,
    lps: Annotated[Optional[list[str]], typer.Option("--lp", help="A language pair to read from --wmt-dir "
                                                               "(repeat).")] = None,
    wmt_ref: Annotated[str, typer.Option("--wmt-ref", "--wmt_ref", help="Reference name in --wmt-dir.")] = "refA",
    wmt_scores: Annotated[str, typer.Option("--wmt-scores", "--wmt_scores", help="Human scores in --wmt-dir.")] = "mqm",
    year: Annotated[str, typer.Option(help="toymt year to evaluate on (train on the other one).")] = "2024",
    num_sources: Annotated[int, typer.Option("--num-sources", "--num_sources", help="toymt sources per language pair.")] = 200,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the results as JSON here.")] = None,
    permutations: Annotated[int, typer.Option(help="Permutations for soft pairwise accuracy.")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", "--batch_size", help="Translations per forward pass (model metrics).")] = 32,
    seed: Annotated[int, typer.Option(help="Seeds the toymt ratings and the permutations.")] = 0,
):
    """Meta-evaluate a metric against human ratings, WMT style: segment-level acc-eq (tie-calibrated), Kendall tau_b
    and tau_c grouped by source item; system-level pairwise accuracy and soft pairwise accuracy."""
    import json

    from rich.progress import Progress

    from segrl.files import write_text_atomic
    from segrl.remedy.data import read_ratings
    from segrl.remedy.meta_eval import COLUMNS, meta_evaluate, metric_scores
    from segrl.remedy.training import RemedyRunArguments, load_ratings

    rated = read_ratings(ratings) if ratings else load_ratings(RemedyRunArguments(
        wmt_dir=str(wmt_dir) if wmt_dir else None, wmt_lps=lps, wmt_ref=wmt_ref, wmt_scores=wmt_scores, year=year,
        num_sources=num_sources), seed=seed)
    with Progress(console=status_console, transient=True) as bar:  # a bar with its ETA (model metrics report it)
        job = bar.add_task(f"Scoring {len(rated)} translations with {metric}", total=len(rated))
        scores = metric_scores(rated, metric, batch_size=batch_size,
                               progress=lambda done: bar.update(job, completed=done))
    results = meta_evaluate(rated, scores, num_permutations=permutations, seed=seed)
    console.print("| language pair | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 1), highlight=False)
    for lp, values in results.items():
        console.print(f"| {lp} | " + " | ".join(f"{values[c]:.4f}" if c in values else "" for c in COLUMNS) + " |",
                      highlight=False)
    if output is not None:
        source = ratings or (f"{wmt_dir} ({', '.join(lps or [])})" if wmt_dir else f"toymt {year}")
        write_text_atomic(output, json.dumps({"metric": metric, "ratings": str(source),
                                              "results": results}, indent=2) + "\n")
