"""Train a policy on preference pairs: TRL's DPO, or DenseDPO on aligned pairs; the library behind
``segrl train dpo`` and ``segrl train densedpo``.

- ``dpo``: TRL's ``DPOTrainer`` on a JSONL file of ``prompt``/``chosen``/``rejected`` text rows (the comparison
  baseline; TRL tokenizes and appends EOS).
- ``densedpo``: :class:`segrl.trainers.dense_dpo.DenseDPOTrainer` on a JSONL file of pre-tokenized aligned pairs
  with segment ids and segment labels (:data:`segrl.trainers.dense_dpo.DENSE_DPO_COLUMNS`, as written by
  :mod:`segrl.aligned_pairs`).

Both write ``config.json``, ``metrics.jsonl`` (every trainer log, flushed line by line), ``checkpoint-<step>/``
every ``save_steps`` (``--resume`` continues from the newest complete one: :mod:`segrl.checkpoints`), ``final/``
(model and tokenizer, safetensors) and, at the end, ``report.html`` (:func:`segrl.report.write_run_report`) into
``output_dir``. The reference model is TRL's: a frozen copy of the starting weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from segrl.checkpoints import METRICS, RESUME_HELP, start_run
from segrl.errors import UserError
from segrl.files import read_jsonl_numbered

__all__ = ["PreferenceRunArguments", "train_preference"]

METHODS = ("dpo", "densedpo")


@dataclass
class PreferenceRunArguments:
    """What to train on; the trainer's own fields live in TRL's ``DPOConfig`` (or ``DenseDPOConfig``)."""

    train_file: str = field(default="", metadata={"help": "JSONL of pairs: prompt/chosen/rejected text (dpo), or "
                                                          "pre-tokenized aligned pairs with segment labels (densedpo)."})
    model: str = field(default="tiny-facts", metadata={"help": "Policy: a preset, a local directory or a hub id."})
    cache_dir: str | None = field(default=None, metadata={"help": "Preset cache [default: $SEGRL_CACHE]."})
    resume: bool = field(default=False, metadata={"help": RESUME_HELP})


def train_preference(method: str, run: PreferenceRunArguments, config) -> Path:
    """Train with ``method`` ("dpo" or "densedpo") on ``run.train_file``; return the output directory."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback

    from segrl.models import load_pretrained, resolve_model_path
    from segrl.report import write_run_report
    from segrl.reward_training import JsonlLogger, save_final
    from segrl.trainers.dense_dpo import (DENSE_DPO_COLUMNS, DenseDPOTrainer, DPOBaselineTrainer,
                                          validate_dense_dpo_row)
    from segrl.training import run_record

    if method not in METHODS:
        raise UserError(f"Unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if not run.train_file:
        raise UserError("--train_file is required")
    if method == "dpo":
        numbered = read_jsonl_numbered(run.train_file, {"prompt": str, "chosen": str, "rejected": str})
        rows = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for _, row in numbered]
    else:
        numbered = read_jsonl_numbered(run.train_file, {name: list for name in DENSE_DPO_COLUMNS})
        rows = [{k: row[k] for k in DENSE_DPO_COLUMNS} for _, row in numbered]
        for index, ((line, _), row) in enumerate(zip(numbered, rows)):
            try:
                validate_dense_dpo_row(row, index, config.max_length)
            except UserError as err:  # name the file and its line rather than the dataset's 0-based row
                detail = str(err).removeprefix(f"train dataset, row {index}, ")
                raise UserError(f"{run.train_file}, line {line}: {detail}") from None
    path = resolve_model_path(run.model, cache_dir=run.cache_dir, seed=config.seed)
    model, tokenizer = load_pretrained(path, AutoModelForCausalLM, name=run.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if method == "densedpo":
        _check_token_ids(run.train_file, numbered, model.config.vocab_size)

    out = Path(config.output_dir)
    resolved = {"method": method, "run": asdict(run), "trainer": config.to_dict(), "pairs": len(rows), **run_record()}
    main_process = config.process_index == 0
    checkpoint = start_run(out, run.resume, resolved, main_process)

    trainer_class = DPOBaselineTrainer if method == "dpo" else DenseDPOTrainer
    trainer = trainer_class(model=model, args=config, train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer, callbacks=[JsonlLogger(out / METRICS)])
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=checkpoint)
    save_final(trainer, out)
    write_run_report(out, main_process)  # last: a report that fails is a warning, the run stays complete
    return out


def _check_token_ids(path: str, numbered: list[tuple[int, dict]], vocab_size: int) -> None:
    """Raise :class:`UserError` at the first token id of an aligned pair that the model has no embedding for."""
    for line, row in numbered:
        for name in ("prompt_ids", "chosen_ids", "rejected_ids"):
            bad = [x for x in row[name] if not 0 <= x < vocab_size]
            if bad:
                raise UserError(f"{path}, line {line}: field '{name}' holds token id {bad[0]}; the model's "
                                f"vocabulary has ids 0..{vocab_size - 1}")
