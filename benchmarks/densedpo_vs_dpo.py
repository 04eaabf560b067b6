"""DenseDPO vs DPO on ``facts`` with ``tiny-facts``: the oracle's reward of the policy after training.

    python benchmarks/densedpo_vs_dpo.py --seeds 0 1 2 --pairs 600

Per seed, from the ``tiny-facts`` preset of that seed (the SFT policy, also the reference and the pair sampler):

- ``dpo-independent``: TRL's DPO on two independent policy samples per prompt, labelled by the oracle's whole-response
  reward (ties dropped), ``--pairs`` labelled pairs;
- ``dpo-aligned``: TRL's DPO on aligned pairs (re-infill of η = 0.5 of the lines of a policy sample, in two copies),
  labelled by the whole-response reward, ``--pairs`` pairs;
- ``densedpo``: DenseDPO on the same kind of aligned pairs with a label per regenerated line (the oracle's credit of
  each line), ``--pairs`` pairs that have at least one non-tie label;
- ``densedpo-third``: the same with a third of the pairs.

All arms train with the same settings (β 0.1, ``--epochs``, ``--learning-rate``, batch 16); the score is the mean
oracle reward (:func:`segrl.tasks.facts.reward`) of one sampled completion (T = 1) per held-out prompt, before and
after. Runs are kept under ``--output-dir`` and reused; ``results.json`` is written there and a table printed.
"""

import argparse
import json
import statistics
from pathlib import Path

import torch

from segrl.aligned_pairs import newline_segmenter, oracle_labeller, reinfill_pairs, whole_pair_label
from segrl.models import load_model
from segrl.preference_training import PreferenceRunArguments, train_preference
from segrl.tasks import facts
from segrl.tiny import evaluate, generate_completions

ARMS = ("dpo-independent", "dpo-aligned", "densedpo", "densedpo-third")


def independent_pairs(model, tokenizer, rows, seed: int) -> list[dict]:
    """Two independent samples per prompt, ordered by the oracle's reward; ties dropped."""
    torch.manual_seed(seed)
    prompts = [r["prompt"] for r in rows]
    samples = generate_completions(model, tokenizer, prompts * 2, greedy=False, temperature=1.0, max_new_tokens=48)
    columns = {k: [r[k] for r in rows] * 2 for k in ("op", "number", "num_facts")}
    scores = facts.reward(prompts * 2, samples, **columns)
    pairs = []
    for i, prompt in enumerate(prompts):
        a, b, sa, sb = samples[i], samples[i + len(prompts)], scores[i], scores[i + len(prompts)]
        if sa != sb:
            pairs.append({"prompt": prompt, "chosen": a if sa > sb else b, "rejected": b if sa > sb else a})
    return pairs


def aligned_rows(model, tokenizer, rows, seed: int) -> list[dict]:
    columns = [{k: r[k] for k in ("op", "number", "num_facts")} for r in rows]
    built = reinfill_pairs(model, tokenizer, [r["prompt"] for r in rows], None, newline_segmenter(tokenizer), 0.5,
                           columns=columns, max_new_tokens=16, seed=seed, batch_size=64)
    return [r for r in built if r["chosen_ids"] != r["rejected_ids"]]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pairs", type=int, default=600, help="Labelled pairs per arm (a third for densedpo-third).")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust when sharing the CPU).")
    parser.add_argument("--output-dir", default="runs/densedpo_vs_dpo")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from trl import DPOConfig

    from segrl.trainers.dense_dpo import DenseDPOConfig

    root = Path(args.output_dir)
    on_cpu = not torch.cuda.is_available()
    results = []
    for seed in args.seeds:
        out = root / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        model, tokenizer = load_model("tiny-facts", seed=seed)
        eval_set = facts.make_dataset("test", args.eval_examples, seed=seed)
        start_reward = evaluate(model, tokenizer, facts, eval_set, greedy=False, seed=seed)
        data = {}
        if not (out / "densedpo.jsonl").is_file():
            prompts = facts.make_rows("train", 4 * args.pairs, seed=seed)
            data["dpo-independent"] = independent_pairs(model, tokenizer, prompts, seed)[: args.pairs]
            aligned, counts = oracle_labeller()(aligned_rows(model, tokenizer, prompts, seed))
            dense = [r for r in aligned if any(r["segment_labels"])]
            whole, _ = whole_pair_label(aligned, facts.reward)
            data["dpo-aligned"] = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in whole][: args.pairs]
            data["densedpo"] = dense[: args.pairs]
            print(f"seed {seed}: {len(data['dpo-independent'])} independent pairs, {len(whole)} aligned with a "
                  f"whole-pair label, {len(dense)} with a segment label; labeller {counts}", flush=True)
            for name in ("dpo-independent", "dpo-aligned"):
                write_jsonl(out / f"{name}.jsonl", data[name])
            write_jsonl(out / "densedpo.jsonl", data["densedpo"])
        for arm in ARMS:
            run_dir, file = out / arm, out / f"{arm}.jsonl"
            if arm == "densedpo-third" and not file.is_file():
                rows = (out / "densedpo.jsonl").read_text().splitlines()
                file.write_text("".join(line + "\n" for line in rows[: len(rows) // 3]))
            if not (run_dir / "final" / "model.safetensors").is_file():
                common = dict(output_dir=str(run_dir), seed=seed, beta=0.1, learning_rate=args.learning_rate,
                              num_train_epochs=args.epochs, per_device_train_batch_size=16, logging_steps=10,
                              save_strategy="no", report_to="none", use_cpu=on_cpu, bf16=not on_cpu,
                              gradient_checkpointing=False)
                method = "densedpo" if arm.startswith("densedpo") else "dpo"
                config = DenseDPOConfig(**common) if method == "densedpo" else DPOConfig(**common)
                train_preference(method, PreferenceRunArguments(train_file=str(file), model="tiny-facts"), config)
            trained, trained_tokenizer = load_model(str(run_dir / "final"))
            pairs = len(file.read_text().splitlines())
            end_reward = evaluate(trained, trained_tokenizer, facts, eval_set, greedy=False, seed=seed)
            row = {"seed": seed, "arm": arm, "pairs": pairs, "start": start_reward, "end": end_reward}
            results.append(row)
            print(json.dumps(row), flush=True)
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n| arm | labelled pairs | oracle reward before | after (mean ± std over seeds) |\n|---|---|---|---|")
    for arm in ARMS:
        rows = [r for r in results if r["arm"] == arm]
        ends = [r["end"] for r in rows]
        spread = f" ± {statistics.stdev(ends):.3f}" if len(ends) > 1 else ""
        print(f"| {arm} | {rows[0]['pairs']} | {statistics.mean(r['start'] for r in rows):.3f} | "
              f"{statistics.mean(ends):.3f}{spread} |")


if __name__ == "__main__":
    main()
