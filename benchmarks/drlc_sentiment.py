"""DRLC on ``sentiment`` with ``smollm2-135m``: holistic reward only vs holistic + critic spans (lexicon, self-critique).

    python benchmarks/drlc_sentiment.py --steps 40 --seeds 0

Every arm trains the same model from the same seed for the same steps with the same settings (critic-free dense
advantages, ``--advantage_estimator group``, so that the CPU budget allows it; the paper used PPO with a value
model); only the dense rewards differ:

- ``holistic``: ``segrl train dense`` without a reward model: VADER's compound score on the last token, KL in the
  reward;
- ``lexicon``: ``segrl train drlc --critic lexicon``: plus ±0.5 per token of VADER's positive / negative words;
- ``self``: ``segrl train drlc --critic self``: plus ±0.5 per token of the spans that the policy itself names when
  prompted with the ``sentiment`` critic template (smollm2-135m follows the format but judges poorly).

Measured: the held-out VADER reward (``eval/accuracy`` of the run's metrics: one sampled continuation per held-out
prompt at the training temperature, every ``--eval-every`` steps), and, for the final policies (and the starting
model), a look at reward hacking on ``--samples`` sampled continuations per held-out prompt: mean VADER reward,
length in tokens, distinct bigrams / bigrams, the share of words that repeat an earlier word of the same text, the
share of words that are VADER-positive, and a few example texts.

Runs are kept under ``--output-dir`` and reused (the benchmark can be resumed); ``results.json`` and
``reward_vs_steps.png`` are written there, and a markdown table is printed.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from segrl.models import load_model
from segrl.report import read_metrics
from segrl.tasks import sentiment
from segrl.tiny import generate_completions
from segrl.trainers.dense import DenseRewardConfig
from segrl.trainers.drlc import DRLCConfig
from segrl.training import RunArguments, train

ARMS = ("holistic", "lexicon", "self")


def hacking_stats(model, tokenizer, prompts: list[str], samples: int, max_new_tokens: int, seed: int) -> dict:
    """Reward and reward-hacking signs of ``samples`` sampled continuations (T = 0.7) per prompt."""
    torch.manual_seed(seed)
    texts = generate_completions(model, tokenizer, prompts * samples, greedy=False, temperature=0.7,
                                 max_new_tokens=max_new_tokens, batch_size=64)
    lexicon = sentiment.analyzer().lexicon
    rewards = sentiment.reward(prompts * samples, texts)
    lengths, distinct, repeats, positive = [], [], [], []
    for text in texts:
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        words = [w.lower().strip(".,!?;:\"'()") for w in text.split()]
        words = [w for w in words if w]
        bigrams = list(zip(words, words[1:]))
        distinct.append(len(set(bigrams)) / len(bigrams) if bigrams else 1.0)
        repeats.append(sum(w in words[:i] for i, w in enumerate(words)) / len(words) if words else 0.0)
        positive.append(sum(lexicon.get(w, 0) > 0 for w in words) / len(words) if words else 0.0)
    mean = lambda xs: round(sum(xs) / len(xs), 4)
    return {"vader": mean(rewards), "tokens": mean(lengths), "distinct_2": mean(distinct),
            "repeated_words": mean(repeats), "positive_words": mean(positive),
            "examples": [prompts[i] + "|" + texts[i] for i in range(min(4, len(prompts)))]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--batch-size", type=int, default=16, help="Completions per step.")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=48)
    parser.add_argument("--eval-examples", type=int, default=48)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2, help="Continuations per held-out prompt for the final look.")
    parser.add_argument("--output-dir", default="runs/drlc_sentiment")
    args = parser.parse_args()
    root = Path(args.output_dir)
    on_cpu = not torch.cuda.is_available()
    common = dict(
        use_cpu=on_cpu, bf16=not on_cpu, max_steps=args.steps, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, temperature=0.7, advantage_estimator="group",
        logging_steps=1, save_strategy="no", report_to="none",
    )
    eval_prompts = list(sentiment.make_dataset("test", args.eval_examples, seed=0)["prompt"])
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            out = root / f"{arm}-seed{seed}"
            if not (out / "final" / "model.safetensors").is_file():
                run = RunArguments(task="sentiment", model="smollm2-135m", eval_examples=args.eval_examples,
                                   eval_every=args.eval_every)
                start = time.perf_counter()
                if arm == "holistic":
                    train("dense", run, DenseRewardConfig(output_dir=str(out), seed=seed, **common))
                else:
                    train("drlc", run, DRLCConfig(output_dir=str(out), seed=seed, critic=arm, **common))
                (out / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
            records = read_metrics(out)
            evals = [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]
            steps = [r for r in records if "loss" in r]
            row = {"arm": arm, "seed": seed, "eval_curve": evals, "seconds": float((out / "seconds.txt").read_text()),
                   "train_reward_first5": sum(r["reward"] for r in steps[:5]) / len(steps[:5]),
                   "train_reward_last5": sum(r["reward"] for r in steps[-5:]) / len(steps[-5:])}
            for key in ("critic/unparsed", "critic/spans_not_found", "critic/reward", "critic/rewarded_tokens",
                        "critic/penalised_tokens"):
                if key in steps[0]:
                    row[key] = sum(r[key] for r in steps) / len(steps)
            stats_file = out / "final_stats.json"
            if not stats_file.is_file():
                model, tokenizer = load_model(str(out / "final"))
                stats_file.write_text(json.dumps(hacking_stats(model, tokenizer, eval_prompts, args.samples,
                                                               args.max_completion_length, seed)) + "\n")
            row["final"] = json.loads(stats_file.read_text())
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "final"}), flush=True)
    start_file = root / "start_stats.json"
    if not start_file.is_file():
        model, tokenizer = load_model("smollm2-135m")
        start_file.write_text(json.dumps(hacking_stats(model, tokenizer, eval_prompts, args.samples,
                                                       args.max_completion_length, args.seeds[0])) + "\n")
    start_stats = json.loads(start_file.read_text())
    (root / "results.json").write_text(json.dumps({"start": start_stats, "runs": results}, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in results:
        steps, values = zip(*row["eval_curve"])
        ax.plot(steps, values, marker="o", label=f"{row['arm']} (seed {row['seed']})")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out VADER reward (sampled, T=0.7)")
    ax.set_title("DRLC on sentiment, smollm2-135m")
    ax.legend()
    fig.tight_layout()
    fig.savefig(root / "reward_vs_steps.png", dpi=120)

    print("\n| arm | seed | held-out VADER (start → end) | final: VADER | tokens | distinct-2 | repeated words | "
          "positive words | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    s = start_stats
    print(f"| start (smollm2-135m) | | | {s['vader']:.3f} | {s['tokens']:.1f} | {s['distinct_2']:.3f} | "
          f"{s['repeated_words']:.3f} | {s['positive_words']:.3f} | |")
    for row in results:
        f = row["final"]
        curve = row["eval_curve"]
        print(f"| {row['arm']} | {row['seed']} | {curve[0][1]:.3f} → {curve[-1][1]:.3f} | {f['vader']:.3f} | "
              f"{f['tokens']:.1f} | {f['distinct_2']:.3f} | {f['repeated_words']:.3f} | {f['positive_words']:.3f} | "
              f"{row['seconds'] / 60:.1f} |")


if __name__ == "__main__":
    main()
