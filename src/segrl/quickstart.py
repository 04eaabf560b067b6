"""``segrl quickstart``: GRPO, SPO-chain and SPO-tree on ``arith`` with the tiny preset, at equal generated tokens.

Each method trains the same ``tiny-arith`` policy (same seed, same SFT warm start) on the same prompts until it has
generated ``token_budget`` tokens (SPO's Monte Carlo rollouts count), measuring held-out accuracy along the way;
then ``report.html`` shows accuracy against generated tokens and against wall time, a table, and one SPO completion
coloured by segment advantage.

The settings below were chosen for a few-minute run on 2 CPU cores; they are a demonstration, not a tuned
comparison (``benchmarks/spo_vs_grpo.py`` runs several seeds and learning rates).
"""

from __future__ import annotations

from pathlib import Path

from segrl.report import write_report
from segrl.training import RunArguments, train

#: Settings shared by every method: batch of 8 prompts x 8 completions, short completions, no KL term.
COMMON = dict(
    per_device_train_batch_size=64,
    num_generations=8,
    max_completion_length=48,
    temperature=1.0,
    learning_rate=2e-5,
    beta=0.0,
    max_steps=10_000,  # the token budget ends the run
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    disable_tqdm=True,
)
#: SPO-chain's own settings (the paper's ρ = 0.9 and int5, fewer MC samples than its N = 9 to fit the budget).
SPO_CHAIN = dict(num_mc_samples=4, cutpoint_threshold=0.9, cutpoint_interval=5)
#: SPO-tree's: 3-3-3 trees (the paper's 6-6-6 scaled down) of 10-token segments (about one arith line).
SPO_TREE = dict(spo_mode="tree", tree_branching=[3, 3, 3], segment_length=10, cutpoint_threshold=0.9)
#: report name -> (segrl train method, settings on top of COMMON).
METHODS = {"GRPO": ("grpo", {}), "SPO-chain": ("spo", SPO_CHAIN), "SPO-tree": ("spo", SPO_TREE)}


def quickstart(output_dir: str | Path = "runs/quickstart", token_budget: int = 150_000, seed: int = 0,
               eval_examples: int = 200, eval_every: int = 5, cache_dir: str | None = None,
               model: str = "tiny-arith", **overrides) -> Path:
    """Run GRPO, SPO-chain and SPO-tree at an equal generation budget and write ``output_dir/report.html``.

    ``overrides`` replace fields of :data:`COMMON` (e.g. ``max_completion_length`` for a smaller test run).
    """
    import torch
    from trl import GRPOConfig

    from segrl.trainers.spo import SPOConfig

    out = Path(output_dir)
    run = RunArguments(task="arith", model=model, eval_examples=eval_examples, eval_every=eval_every,
                       max_generated_tokens=token_budget, cache_dir=cache_dir)
    runs = {}
    for name, (method, extra) in METHODS.items():
        print(f"== {name}: training until {token_budget:,} generated tokens", flush=True)
        on_cpu = not torch.cuda.is_available()
        config_class = SPOConfig if method == "spo" else GRPOConfig
        config = config_class(output_dir=str(out / name.lower()), seed=seed, use_cpu=on_cpu, bf16=not on_cpu,
                              **{**COMMON, **overrides, **extra})
        runs[name] = train(method, run, config)
    intro = (f"arith, {model} (seed {seed}), {token_budget:,} generated tokens per method, held-out "
             f"accuracy on {eval_examples} problems (sampled at T = 1, and greedy).")
    return write_report(out / "report.html", runs, "segrl quickstart: GRPO vs SPO-chain vs SPO-tree", intro)
