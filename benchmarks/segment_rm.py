"""Segment vs token vs bandit reward models on ``facts``: accuracy, localisation, and the policy's true reward after RL.

    python benchmarks/segment_rm.py --seeds 0 1 --threshold 1.0 --rl-steps 80

Per seed, with the ``tiny-facts`` preset of that seed as the reference (SFT) model, everything through segrl's own
pipeline (the functions behind ``segrl prepare-segments``, ``train rm``, ``fit-normalizer`` and ``train dense``):

1. Preference pairs from the facts oracle with Bradley-Terry noise: ``--train-pairs`` drawn for the reward models
   (ties, a third of them, carry no signal and are dropped from training), ``--fit-pairs`` (another stream) for the
   normalisers, ``--test-pairs`` held out; segmented once at ``--threshold`` by the reference model.
2. Three reward models from the same data and settings: ``segment`` (entropy segments), ``token``, ``bandit``.
3. Held-out pairwise accuracy, against the noisy labels and against the oracle's order (pairs with unequal scores);
   **localisation**: for every statement (line) of every held-out response, the reward of the segment that
   completes it (holds its newline: where the line's truth becomes known), raw and normalised, against whether the
   oracle credits the line, as a ROC-AUC. Bandit RMs have one reward per response, so no localisation.
4. RL of ``tiny-facts`` with each RM and its normaliser (``DenseRewardTrainer``, same steps, seed and settings,
   ``--estimators``: ``gae`` = PPO with a critic, ``group`` = critic-free), and the oracle's reward of the policy on
   held-out prompts (sampled at T = 1) before and after; and, as a reference point, TRL's GRPO on the oracle's own
   reward with the same settings (what RL reaches when the reward is exact).

Runs are kept under ``--output-dir`` and reused (the benchmark can be resumed); a JSON of all numbers and a markdown
table are written there and printed.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoTokenizer
from trl import GRPOConfig

from segrl.models import load_model
from segrl.normalizers import load_normalizer
from segrl.prepare import prepare_segments, write_jsonl
from segrl.report import read_metrics
from segrl.reward_training import RewardRunArguments, fit_normalizer, score_pairs, train_reward_model
from segrl.segment_rm import load_reward_model
from segrl.tasks import facts
from segrl.trainers.dense import DenseRewardConfig
from segrl.trainers.segment_rm import SegmentRewardConfig
from segrl.training import RunArguments, train

VARIANTS = ("segment", "token", "bandit")


def prepared_file(path: Path, rows, model, tokenizer, threshold: float) -> Path:
    if not path.is_file():
        prepared, skipped = prepare_segments(rows, model, tokenizer, threshold, batch_size=64, source=path.name)
        write_jsonl(path, [dict(r, segment_threshold=threshold) for r in prepared])
        print(f"  {path.name}: {len(prepared)} pairs, skipped {dict(skipped)}", flush=True)
    return path


def completing_tokens(row: dict, side: str, tokenizer) -> list[tuple[int, bool]]:
    """For each statement (line) of a response: the position (in the row's ``*_ids``) of the token that completes
    it (holds its last character, the newline), and whether the oracle credits the line."""
    text = row[side]
    encoded = tokenizer(text=text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded["input_ids"] == row[f"{side}_ids"][row["prompt_length"] : -1], "tokenized unlike when prepared"
    credits = facts.statement_credits(text, row["op"], row["number"], row["num_facts"])
    out = []
    for statement, credit in zip(facts.parse_statements(text), credits):
        if statement.blank:
            continue
        last_char = statement.end - 1
        token = next(j for j, (a, b) in enumerate(encoded["offset_mapping"]) if a <= last_char < b)
        out.append((row["prompt_length"] + token, credit > 0))
    return out


def evaluate_rm(rm_dir: Path, normalizer_path: Path, test_rows: list[dict], tokenizer) -> dict:
    """Pairwise accuracy, and localisation: ROC-AUC of the reward of the segment that completes each line (raw and
    normalised) against the line's truth."""
    model = load_reward_model(rm_dir, device="cpu")
    normalizer = load_normalizer(normalizer_path)
    scored = score_pairs(model, test_rows, tokenizer.pad_token_id)
    label_right, oracle_right, oracle_pairs = 0, 0, 0
    raw, normalised, good = [], [], []
    for row, pair in zip(test_rows, scored):
        margin = pair["chosen"]["score"] - pair["rejected"]["score"]
        label_right += margin > 0
        if row["chosen_score"] != row["rejected_score"]:
            oracle_pairs += 1
            oracle_right += (margin > 0) == (row["chosen_score"] > row["rejected_score"])
        for side in ("chosen", "rejected"):
            rewards, spans = pair[side]["segment_rewards"], pair[side]["segment_spans"]
            if len(spans) < 2:  # bandit: one reward per response, nothing to localise
                continue
            ids = torch.full((1, spans[-1][1]), -1)
            for index, (start, end) in enumerate(spans):
                ids[0, start:end] = index
            scaled = normalizer.apply(torch.tensor([rewards], dtype=torch.float64), ids)[0].tolist()
            for position, is_good in completing_tokens(row, side, tokenizer):
                segment = next(i for i, (start, end) in enumerate(spans) if start <= position < end)
                raw.append(rewards[segment])
                normalised.append(scaled[segment])
                good.append(is_good)
    result = {"accuracy_vs_labels": label_right / len(test_rows), "accuracy_vs_oracle": oracle_right / oracle_pairs}
    if good and len(set(good)) == 2:
        result["auc_lines_raw"] = roc_auc_score(good, raw)
        result["auc_lines_normalised"] = roc_auc_score(good, normalised)
    return result


def rl_run(args) -> RunArguments:
    return RunArguments(task="facts", model="tiny-facts", eval_examples=args.eval_examples, eval_every=args.rl_steps)


def rl_settings(args, on_cpu: bool) -> dict:
    """The RL settings every policy run shares (dense runs and the oracle GRPO reference)."""
    return dict(use_cpu=on_cpu, bf16=not on_cpu, max_steps=args.rl_steps, learning_rate=args.rl_lr,
                per_device_train_batch_size=64, num_generations=8, max_completion_length=40, temperature=1.0,
                logging_steps=max(1, args.rl_steps // 10), save_strategy="no", report_to="none", disable_tqdm=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threshold", type=float, default=1.0, help="Entropy threshold c of the segment RM.")
    parser.add_argument("--train-pairs", type=int, default=24000)
    parser.add_argument("--fit-pairs", type=int, default=1000)
    parser.add_argument("--test-pairs", type=int, default=1000)
    parser.add_argument("--rm-lr", type=float, default=3e-4)
    parser.add_argument("--rm-epochs", type=float, default=2.0)
    parser.add_argument("--rl-steps", type=int, default=80)
    parser.add_argument("--rl-lr", type=float, default=1e-4)
    parser.add_argument("--estimators", nargs="+", default=["gae", "group"], choices=["gae", "group"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--output-dir", default="runs/segment_rm")
    args = parser.parse_args()
    torch.set_num_threads(1)
    on_cpu = not torch.cuda.is_available()
    root = Path(args.output_dir)
    results = []

    for seed in args.seeds:
        base = root / f"seed{seed}"
        base.mkdir(parents=True, exist_ok=True)
        model, tokenizer = load_model("tiny-facts", seed=seed)
        data = {
            "train": [r for r in facts.make_preference_rows("train", args.train_pairs, seed=seed)
                      if r["chosen_score"] != r["rejected_score"]],
            "fit": facts.make_preference_rows("train", args.fit_pairs, seed=1000 + seed),
            "test": facts.make_preference_rows("test", args.test_pairs, seed=seed),
        }
        files = {name: prepared_file(base / f"{name}-c{args.threshold:g}.jsonl", rows, model, tokenizer,
                                     args.threshold) for name, rows in data.items()}
        test_rows = [json.loads(line) for line in files["test"].read_text().splitlines()]
        rm_tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)

        for variant in args.variants:
            rm_out = base / f"rm-{variant}"
            if not (rm_out / "final").is_dir():
                print(f"== seed {seed}: {variant} reward model", flush=True)
                start = time.perf_counter()
                config = SegmentRewardConfig(
                    output_dir=str(rm_out), variant=variant, learning_rate=args.rm_lr, num_train_epochs=args.rm_epochs,
                    per_device_train_batch_size=32, lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=25,
                    save_strategy="no", report_to="none", seed=seed, use_cpu=on_cpu, bf16=False, disable_tqdm=True,
                )
                train_reward_model(RewardRunArguments(train_file=str(files["train"]), model="tiny-facts"), config)
                (rm_out / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
            normalizer = rm_out / "normalizer.json"
            if not normalizer.is_file():
                fit_normalizer(str(rm_out / "final"), str(files["fit"]), normalizer)
            row = {"seed": seed, "variant": variant,
                   **evaluate_rm(rm_out / "final", normalizer, test_rows, rm_tokenizer),
                   "rm_seconds": float((rm_out / "seconds.txt").read_text())}
            for estimator in args.estimators:
                rl_out = base / f"rl-{variant}-{estimator}"
                if not (rl_out / "final").is_dir():
                    print(f"== seed {seed}: RL with the {variant} RM ({estimator})", flush=True)
                    run = rl_run(args)
                    config = DenseRewardConfig(
                        output_dir=str(rl_out), seed=seed, **rl_settings(args, on_cpu),
                        reward_model=str(rm_out / "final"), normalizer=str(normalizer), advantage_estimator=estimator,
                        reward_weights=[0.0], value_learning_rate=1e-4,
                    )
                    train("dense", run, config)
                evals = [r for r in read_metrics(rl_out) if "eval/accuracy" in r]
                row[f"rl_{estimator}_start"] = evals[0]["eval/accuracy"]
                row[f"rl_{estimator}_end"] = evals[-1]["eval/accuracy"]
                row[f"rl_{estimator}_seconds"] = evals[-1]["wall_seconds"]
            results.append(row)
            print(json.dumps(row), flush=True)

        oracle_out = base / "rl-oracle-grpo"
        if not (oracle_out / "final").is_dir():
            print(f"== seed {seed}: GRPO on the oracle's reward", flush=True)
            train("grpo", rl_run(args), GRPOConfig(output_dir=str(oracle_out), seed=seed, **rl_settings(args, on_cpu)))
        evals = [r for r in read_metrics(oracle_out) if "eval/accuracy" in r]
        results.append({"seed": seed, "variant": "oracle (GRPO)", "rl_grpo_start": evals[0]["eval/accuracy"],
                         "rl_grpo_end": evals[-1]["eval/accuracy"], "rl_grpo_seconds": evals[-1]["wall_seconds"]})

    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    keys = list(dict.fromkeys(k for r in results for k in r if k not in ("seed", "variant")))
    lines = ["| RM | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for variant in [*args.variants, "oracle (GRPO)"]:
        rows = [r for r in results if r["variant"] == variant]
        cells = []
        for key in keys:
            values = [r[key] for r in rows if key in r]
            if not values:
                cells.append("–")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (root / "table.md").write_text(table + "\n")
    print(f"\nfacts, tiny-facts small, seeds {args.seeds}, threshold {args.threshold}, {args.train_pairs} train pairs, "
          f"RL {args.rl_steps} steps\n{table}")


if __name__ == "__main__":
    main()
