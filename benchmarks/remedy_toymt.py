"""ReMedy on ``toymt``: train on the 2023 ratings, meta-evaluate on 2024's (other systems, other sources).

    python benchmarks/remedy_toymt.py --seeds 0 1

Per seed, on the ``tiny-toymt`` preset of that seed (a small Llama pre-trained by SFT to translate toymt's sources):

- ``remedy``: ``segrl remedy train`` (pairs of 2023 ratings, Bradley-Terry + centring 0.01, reference-based);
- ``remedy-qe``: the same, reference-free;
- ``regression``: what a user would try first: the same backbone and inputs with a scalar head trained by MSE on
  the z-scored absolute human scores of the same ratings (``transformers.Trainer``, same steps budget);
- ``untrained``: the backbone with a fresh scalar head (what the training adds);
- ``chrf``, ``bleu``: sentence-level sacrebleu against the reference;
- ``true-mqm``: the noise-free MQM penalty of each hypothesis (the ratings are this plus rater noise and missed
  minor errors), as the ceiling of what any metric can reach against noisy ratings.

Each is meta-evaluated on the 2024 ratings (:func:`segrl.remedy.meta_eval.meta_evaluate`: segment acc-eq with tie
calibration, Kendall τ_b/τ_c grouped by item, system pairwise accuracy and soft pairwise accuracy, averaged over the
two language pairs). Runs are kept under ``--output-dir`` and reused; ``results.json`` is written there and a
markdown table printed.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from segrl.remedy.data import ratings_from_rows, split_by_source
from segrl.remedy.meta_eval import COLUMNS, meta_evaluate, metric_scores
from segrl.remedy.training import RemedyRunArguments, train_remedy
from segrl.tasks import toymt


def train_regression(model_name: str, ratings, out: Path, seed: int, epochs: float, lr: float, batch_size: int,
                     on_cpu: bool) -> Path:
    """The baseline: a scalar head regressed on z-scored human scores (same backbone and inputs as ReMedy)."""
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from segrl.models import resolve_model_path
    from segrl.remedy.inputs import encode
    from segrl.remedy.scoring import MODEL_INFO

    path = resolve_model_path(model_name, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, problem_type="regression")
    model.config.pad_token_id = tokenizer.pad_token_id
    scores = np.array([r.score for r in ratings])
    mean, std = scores.mean(), scores.std()
    rows = [{"input_ids": encode(tokenizer, r.src, r.mt, r.lp, r.ref), "labels": float((r.score - mean) / std)}
            for r in ratings]
    args = TrainingArguments(output_dir=str(out / "tmp"), num_train_epochs=epochs, learning_rate=lr,
                             per_device_train_batch_size=batch_size, seed=seed, logging_steps=50,
                             save_strategy="no", report_to="none", use_cpu=on_cpu, bf16=not on_cpu,
                             gradient_checkpointing=False)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    trainer.save_model(str(out / "final"))
    (out / "final" / MODEL_INFO).write_text(json.dumps({"reference_free": False}) + "\n")
    return out / "final"


def untrained(model_name: str, out: Path, seed: int) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from segrl.models import resolve_model_path
    from segrl.remedy.scoring import MODEL_INFO

    path = resolve_model_path(model_name, seed=seed)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / MODEL_INFO).write_text(json.dumps({"reference_free": False}) + "\n")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train-sources", type=int, default=400, help="2023 sources per language pair.")
    parser.add_argument("--test-sources", type=int, default=200, help="2024 sources per language pair.")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust when sharing the CPU).")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output-dir", default="runs/remedy_toymt")
    args = parser.parse_args()
    from trl import RewardConfig

    torch.set_num_threads(args.threads)
    root = Path(args.output_dir)
    on_cpu = not torch.cuda.is_available()
    test_rows = toymt.make_ratings("2024", num_sources=args.test_sources, seed=0)
    test = ratings_from_rows(test_rows, "toymt 2024")
    results = []
    for seed in args.seeds:
        metrics: dict[str, object] = {}
        for name, no_ref in (("remedy", False), ("remedy-qe", True)):
            out = root / f"{name}-seed{seed}"
            if not (out / "final" / "calibration.json").is_file():
                start = time.perf_counter()
                run = RemedyRunArguments(year="2023", num_sources=args.train_sources, no_ref=no_ref)
                config = RewardConfig(output_dir=str(out), seed=seed, num_train_epochs=args.epochs,
                                      learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size,
                                      logging_steps=50, save_strategy="no", report_to="none", use_cpu=on_cpu,
                                      bf16=not on_cpu, gradient_checkpointing=False)
                train_remedy(run, config)
                (out / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
            metrics[name] = str(out / "final")
        out = root / f"regression-seed{seed}"
        if not (out / "final" / "model.safetensors").is_file():
            start = time.perf_counter()
            train_ratings = ratings_from_rows(toymt.make_ratings("2023", num_sources=args.train_sources, seed=seed),
                                              "toymt 2023")
            train_ratings, _ = split_by_source(train_ratings, 0.1, seed=seed)  # the sources ReMedy trained on
            train_regression("tiny-toymt", train_ratings, out, seed, args.epochs, args.learning_rate,
                             args.batch_size, on_cpu)
            (out / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
        metrics["regression"] = str(out / "final")
        out = root / f"untrained-seed{seed}"
        if not (out / "model.safetensors").is_file():
            untrained("tiny-toymt", out, seed)
        metrics["untrained"] = str(out)
        metrics.update(chrf="chrf", bleu="bleu")
        for name, metric in metrics.items():
            cache = root / f"scores-{name}-seed{seed}.json"
            if not cache.is_file():
                cache.write_text(json.dumps(metric_scores(test, metric).tolist()))
            row = meta_evaluate(test, json.loads(cache.read_text()), seed=seed)
            results.append({"metric": name, "seed": seed, **row})
            print(json.dumps({"metric": name, "seed": seed, **row["average"]}), flush=True)
    oracle = meta_evaluate(test, [r["mqm"] for r in test_rows], seed=0)
    results.append({"metric": "true-mqm", "seed": None, **oracle})
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    names = list(dict.fromkeys(r["metric"] for r in results))
    columns = [c for c in COLUMNS if c != "epsilon"]
    print("\n| metric | seeds | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns))
    for name in names:
        rows = [r for r in results if r["metric"] == name]
        cells = []
        for column in columns:
            values = [r["average"][column] for r in rows]
            cells.append(f"{np.mean(values):.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else ""))
        print(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
