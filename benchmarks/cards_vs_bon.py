"""CARDS vs Best-of-N vs vanilla sampling: reward reached against policy tokens and wall time.

    python benchmarks/cards_vs_bon.py --prompts 100 --max-new-tokens 64

``smollm2-135m`` continues ``--prompts`` review openings of the ``sentiment`` task (test split); the reward is VADER's
compound score of the continuation (segrl.tasks.sentiment.reward). Every method uses the same sampler (top-k 40,
temperature 0.7, at most 128 new tokens) and the same prompts:

1. vanilla sampling (its reward only measured);
2. Best-of-N, N = 4, 8, 16, each a separate timed run;
3. CARDS with the paper's defaults (soft acceptance, beta 0.7) and with hard acceptance (r >= tau: free of the
   reward's scale, which beta is not: VADER spans [-1, 1], the paper's reward models about ten times that), both
   with r* = vanilla mean + 0.5 · std (``--target-reward`` to override);
4. what batching buys CARDS: the first ``--single-prompts`` prompts decoded one at a time (batch size 1) and in
   one batch, with their prompts per second, and whether the outputs are the same (a prompt's random stream does not
   depend on its batch, so they should be, up to float round-off in batched matmuls).

Each run writes its JSONL and summary under ``--output-dir`` and is reused when present (resumable). Prints a
markdown table, writes ``results.json`` and ``reward_vs_cost.png`` (mean reward against policy tokens per prompt and
against wall time).
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from segrl.decoding.cards import CardsConfig
from segrl.decoding.run import run
from segrl.decoding.sampling import SamplingConfig
from segrl.decoding.scorers import load_scorer
from segrl.models import load_model
from segrl.tasks import sentiment


def decode_once(name, method, policy, tokenizer, scorer, prompts, config, out_dir: Path) -> dict:
    summary_path = out_dir / f"{name}.summary.json"
    if summary_path.is_file():
        print(f"  {name}: reusing {summary_path}", flush=True)
        return json.loads(summary_path.read_text())
    began = time.perf_counter()

    def progress(result, done, total):
        if done % 10 == 0 or done == total:
            print(f"  {name}: {done}/{total} prompts, {time.perf_counter() - began:.0f} s", flush=True)

    return run(method, policy, tokenizer, scorer, prompts, config, out_dir / f"{name}.jsonl", progress=progress)


def rows_of(out_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out_dir / f"{name}.jsonl").read_text().splitlines()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--target-reward", type=float, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="L_max of every method")
    parser.add_argument("--acceptance", nargs="+", default=["soft", "hard"], help="CARDS runs (soft: the paper's)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences (vanilla, BoN) or prompts (CARDS)")
    parser.add_argument("--single-prompts", type=int, default=16)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/cards_vs_bon"))
    args = parser.parse_args()
    out_dir = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    policy, tokenizer = load_model("smollm2-135m")
    scorer = load_scorer("sentiment")
    prompts = [r["prompt"] for r in sentiment.make_rows("test", args.prompts, args.seed)]
    sampling = SamplingConfig(batch_size=args.batch_size, seed=args.seed, max_new_tokens=args.max_new_tokens)
    print(f"{len(prompts)} prompts, torch threads {torch.get_num_threads()}", flush=True)

    summaries = {"vanilla": decode_once("vanilla", "vanilla", policy, tokenizer, scorer, prompts, sampling, out_dir)}
    for n in args.ns:
        summaries[f"bon{n}"] = decode_once(f"bon{n}", "bon", policy, tokenizer, scorer, prompts,
                                           replace(sampling, n=n), out_dir)
    vanilla_rewards = [r["reward"] for r in rows_of(out_dir, "vanilla") if r["reward"] is not None]
    mean = sum(vanilla_rewards) / len(vanilla_rewards)
    std = (sum((x - mean) ** 2 for x in vanilla_rewards) / (len(vanilla_rewards) - 1)) ** 0.5
    target = args.target_reward if args.target_reward is not None else mean + 0.5 * std
    print(f"r* = {target:.3f} (vanilla mean {mean:.3f}, std {std:.3f})", flush=True)
    cards_config = CardsConfig(target_reward=target, batch_size=min(args.batch_size, 16), seed=args.seed,
                               max_new_tokens=args.max_new_tokens)
    for acceptance in args.acceptance:
        name = "cards" if acceptance == "soft" else f"cards_{acceptance}"
        summaries[name] = decode_once(name, "cards", policy, tokenizer, scorer, prompts,
                                      replace(cards_config, acceptance=acceptance), out_dir)

    # what batching buys: the same prompts one at a time and in one batch
    few = prompts[: args.single_prompts]
    single = decode_once("cards_single", "cards", policy, tokenizer, scorer, few, replace(cards_config, batch_size=1), out_dir)
    batched = decode_once("cards_batched", "cards", policy, tokenizer, scorer, few,
                          replace(cards_config, batch_size=len(few)), out_dir)
    same = sum(a["text"] == b["text"] for a, b in zip(rows_of(out_dir, "cards_single"), rows_of(out_dir, "cards_batched")))

    table = ["| method | mean reward | policy tokens / prompt | RM calls / prompt | wall time (s) | prompts / s |",
             "|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        p = s["prompts"] - s["skipped"]
        table.append(f"| {name} | {s['mean_reward']:.3f} | {s['policy_tokens'] / p:.0f} | {s['rm_calls'] / p:.1f} | "
                     f"{s['wall_time']:.0f} | {s['prompts_per_second']:.3f} |")
    cards = summaries["cards"] if "cards" in summaries else summaries[f"cards_{args.acceptance[0]}"]
    results = {
        "prompts": len(prompts), "target_reward": target, "vanilla_mean": mean, "vanilla_std": std,
        "summaries": summaries,
        "batching": {"prompts": len(few), "single_prompts_per_second": single["prompts_per_second"],
                     "batched_prompts_per_second": batched["prompts_per_second"],
                     "speedup": batched["prompts_per_second"] / single["prompts_per_second"],
                     "same_text": same, "single_mean_reward": single["mean_reward"],
                     "batched_mean_reward": batched["mean_reward"]},
        "cards_segments_per_prompt": cards["segments"] / (cards["prompts"] - cards["skipped"]),
        "cards_fallbacks": cards["fallbacks"],
        "cards_acceptance_rate": cards["segments"] / (cards["segments"] + cards["rejections"]),
    }
    for name in [k for k in summaries if k.startswith("cards")]:
        for n in sorted(args.ns):
            bon = summaries[f"bon{n}"]
            results[f"{name}_time_over_bon{n}"] = summaries[name]["wall_time"] / bon["wall_time"]
            results[f"{name}_tokens_over_bon{n}"] = summaries[name]["policy_tokens"] / bon["policy_tokens"]
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(summaries, out_dir / "reward_vs_cost.png")
    print("\n".join(table))
    b = results["batching"]
    print(f"\nbatching ({b['prompts']} prompts): {b['single_prompts_per_second']:.3f} -> "
          f"{b['batched_prompts_per_second']:.3f} prompts/s (x{b['speedup']:.2f}); same text for {same}/{len(few)}")
    print(json.dumps({k: v for k, v in results.items() if k not in ("summaries", "batching")}, indent=2))


def plot(summaries: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, s in summaries.items():
        p = s["prompts"] - s["skipped"]
        marker = "*" if name.startswith("cards") else "o"
        for ax, x in zip(axes, (s["policy_tokens"] / p, s["wall_time"])):
            ax.scatter([x], [s["mean_reward"]], marker=marker, s=120 if name.startswith("cards") else 50)
            ax.annotate(name, (x, s["mean_reward"]), textcoords="offset points", xytext=(5, 5))
    bon = [s for name, s in summaries.items() if name.startswith("bon") or name == "vanilla"]
    for ax, key in zip(axes, ("tokens", "time")):
        xs = [s["policy_tokens"] / (s["prompts"] - s["skipped"]) if key == "tokens" else s["wall_time"] for s in bon]
        ax.plot(xs, [s["mean_reward"] for s in bon], color="grey", linewidth=1)
        ax.set_xscale("log")
        ax.set_ylabel("mean VADER reward")
    axes[0].set_xlabel("policy tokens per prompt (log)")
    axes[1].set_xlabel("wall time, s (log)")
    fig.suptitle("CARDS vs Best-of-N vs vanilla, smollm2-135m, sentiment")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
