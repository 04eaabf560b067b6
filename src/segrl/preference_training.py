"""Train a policy on preference pairs: TRL's DPO, or DenseDPO on aligned pairs; the library behind
``segrl train dpo`` and ``segrl train densedpo``.

- ``dpo``: TRL's ``DPOTrainer`` on a JSONL file of ``prompt``/``chosen``/``rejected`` text rows (the comparison
  baseline; TRL tokenizes and appends EOS).
- ``densedpo``: :class:`segrl.trainers.dense_dpo.DenseDPOTrainer` on a JSONL file of pre-tokenized aligned pairs
  with segment ids and segment labels (:data:`segrl.trainers.dense_dpo.DENSE_DPO_COLUMNS`, as written by
  :mod:`segrl.aligned_pairs`).

Both write ``config.json``, ``metrics.jsonl`` (every trainer log, flushed line by line) and ``final/`` (model and
tokenizer, safetensors) into ``output_dir``. The reference model is TRL's: a frozen copy of the starting weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from segrl.errors import UserError
from segrl.files import read_jsonl, write_text_atomic

__all__ = ["PreferenceRunArguments", "train_preference"]

METHODS = ("dpo", "densedpo")


@dataclass
class PreferenceRunArguments:
    """What to train on; the trainer's own fields live in TRL's ``DPOConfig`` (or ``DenseDPOConfig``)."""

    train_file: str = field(default="", metadata={"help": "JSONL of pairs: prompt/chosen/rejected text (dpo), or "
                                                          "pre-tokenized aligned pairs with segment labels (densedpo)."})
    model: str = field(default="tiny-facts", metadata={"help": "Policy: a preset, a local directory or a hub id."})
    cache_dir: str | None = field(default=None, metadata={"help": "Preset cache [default: $SEGRL_CACHE]."})


def train_preference(method: str, run: PreferenceRunArguments, config) -> Path:
    """Train with ``method`` ("dpo" or "densedpo") on ``run.train_file``; return the output directory."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import DPOTrainer

    from segrl.models import resolve_model_path
    from segrl.reward_training import JsonlLogger
    from segrl.trainers.dense_dpo import DENSE_DPO_COLUMNS, DenseDPOTrainer
    from segrl.training import run_record

    if method not in METHODS:
        raise UserError(f"Unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not run.train_file:
        raise UserError("--train_file is required")
    if method == "dpo":
        rows = read_jsonl(run.train_file, {"prompt": str, "chosen": str, "rejected": str})
        rows = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]
    else:
        rows = read_jsonl(run.train_file, {name: list for name in DENSE_DPO_COLUMNS})
        rows = [{k: row[k] for k in DENSE_DPO_COLUMNS} for row in rows]
    if not rows:
        raise UserError(f"{run.train_file}: no pairs")
    path = resolve_model_path(run.model, cache_dir=run.cache_dir, seed=config.seed)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = {"method": method, "run": asdict(run), "trainer": config.to_dict(), "pairs": len(rows), **run_record()}
    write_text_atomic(out / "config.json", json.dumps(resolved, indent=2, default=str) + "\n")
    trainer_class = DPOTrainer if method == "dpo" else DenseDPOTrainer
    trainer = trainer_class(model=model, args=config, train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer, callbacks=[JsonlLogger(out / "metrics.jsonl")])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trainer.save_model(str(out / "final"))
    return out
