"""Train and use segment reward models: the library behind ``segrl prepare-segments``, ``segrl train rm`` and
``segrl fit-normalizer``.

The pipeline of Yin et al. 2025 on any ``prompt/chosen/rejected`` data:

1. :func:`prepare` cuts every response with the reference model's entropy (:mod:`segrl.prepare`) and stamps each
   row with the threshold (``segment_threshold``) and the model (``segment_reference``);
2. :func:`train_reward_model` trains a :class:`segrl.trainers.segment_rm.SegmentRewardTrainer` on the prepared
   file and writes ``final/`` (the model, safetensors, and its tokenizer), ``config.json`` and ``metrics.jsonl``;
3. :func:`fit_normalizer` scores a held-out prepared file with the trained model and fits the location-aware
   normaliser (segment and token variants) or the global one (bandit) into a JSON file;
4. ``segrl train dense --reward_model DIR --normalizer FILE`` uses both as the dense reward of RL.

:func:`score_pairs` gives the per-segment rewards of prepared pairs, for evaluation (pairwise accuracy,
localisation).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from segrl.errors import UserError
from segrl.files import read_jsonl, write_text_atomic

__all__ = ["JsonlLogger", "RewardRunArguments", "fit_normalizer", "prepare", "score_pairs", "train_reward_model"]


@dataclass
class RewardRunArguments:
    """What to train the reward model on; the trainer's fields live in ``SegmentRewardConfig``."""

    train_file: str = field(default="", metadata={"help": "Prepared JSONL (from `segrl prepare-segments`)."})
    eval_file: str | None = field(default=None, metadata={"help": "Prepared held-out JSONL for pairwise accuracy."})
    model: str = field(
        default="tiny-facts",
        metadata={"help": "Backbone: the SFT/reference model the data was segmented with (preset, directory, hub id)."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Preset cache [default: $SEGRL_CACHE]."})


def prepare(source: str, output: str | Path, model_name: str, threshold: float, *, max_length: int | None = None,
            batch_size: int = 16, cache_dir: str | None = None, seed: int = 0, progress=None) -> dict[str, Any]:
    """Run :func:`segrl.prepare.prepare_segments` on a JSONL file or dataset and write the prepared JSONL.

    Returns a summary: rows in and out, skipped rows per reason, mean segments per response.
    """
    from segrl.models import load_model, resolve_model_path
    from segrl.prepare import load_preference_rows, prepare_segments, write_jsonl

    rows = load_preference_rows(source)
    model, tokenizer = load_model(model_name, cache_dir=cache_dir, seed=seed)
    prepared, skipped = prepare_segments(rows, model, tokenizer, threshold, max_length=max_length,
                                         batch_size=batch_size, progress=progress, source=str(source))
    reference = _model_identity(model_name, resolve_model_path(model_name, cache_dir=cache_dir, seed=seed))
    for row in prepared:
        row["segment_threshold"] = threshold
        row["segment_reference"] = reference
    write_jsonl(output, prepared)
    segments = [max(ids) + 1 for row in prepared for ids in (row["chosen_segment_ids"], row["rejected_segment_ids"])]
    return {"rows": len(rows), "written": len(prepared), "skipped": dict(skipped),
            "segments_per_response": sum(segments) / len(segments)}


def _model_identity(name: str, path) -> str:
    """What a model name means here, given the path it resolved to (:func:`segrl.models.resolve_model_path`): a
    preset's cache directory name (it holds the task, size and seed), a local directory's absolute path, else the
    hub id as given."""
    from segrl.models import SMOLLM2, TINY_PREFIX

    if name == SMOLLM2 or name.startswith(TINY_PREFIX):
        return Path(path).name
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else str(name)


def _read_prepared(path: str) -> list[dict[str, Any]]:
    from segrl.trainers.segment_rm import PREPARED_COLUMNS

    try:
        return read_jsonl(path, {name: list if name != "prompt_length" else int for name in PREPARED_COLUMNS})
    except UserError as err:
        raise UserError(f"{err} (prepare the file with `segrl prepare-segments`)") from None


def _prepared_dataset(path: str):
    from datasets import Dataset

    from segrl.trainers.segment_rm import PREPARED_COLUMNS

    rows = _read_prepared(path)
    thresholds = {row.get("segment_threshold") for row in rows}
    references = {row.get("segment_reference") for row in rows}
    if len(thresholds) != 1 or len(references) != 1:
        raise UserError(f"{path}: the rows were segmented with different thresholds or reference models "
                        f"({sorted(map(str, thresholds))}, {sorted(map(str, references))})")
    columns = [*PREPARED_COLUMNS, "segment_threshold"]
    dataset = Dataset.from_list([{name: row.get(name) for name in columns} for row in rows])
    return dataset, thresholds.pop(), references.pop()


class JsonlLogger(TrainerCallback):
    """Append every trainer log to a JSONL file (with its step), flushed line by line, so a crash loses nothing logged."""

    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")


def train_reward_model(run: RewardRunArguments, config) -> Path:
    """Train a segment reward model (``config``: a ``SegmentRewardConfig``); return the output directory."""
    from transformers import AutoTokenizer, PrinterCallback

    from segrl.models import resolve_model_path
    from segrl.segment_rm import new_reward_model
    from segrl.trainers.segment_rm import SegmentRewardTrainer
    from segrl.training import run_record

    if not run.train_file:
        raise UserError("--train_file is required: a JSONL prepared with `segrl prepare-segments`")
    train_set, threshold, reference = _prepared_dataset(run.train_file)
    eval_set = _prepared_dataset(run.eval_file)[0] if run.eval_file else None
    path = resolve_model_path(run.model, cache_dir=run.cache_dir, seed=config.seed)
    backbone = _model_identity(run.model, path)
    if reference is not None and reference != backbone:  # the segments are the reference model's: same model
        raise UserError(
            f"{run.train_file} was segmented by {reference}, but the reward model would start from {backbone}; "
            "use the same model (for tiny-<task> presets also the same --seed)"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = new_reward_model(path, config.variant, threshold if config.variant == "segment" else None, seed=config.seed)

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = {"method": "rm", "run": asdict(run), "trainer": config.to_dict(), "segment_threshold": threshold,
                **run_record()}
    write_text_atomic(out / "config.json", json.dumps(resolved, indent=2, default=str) + "\n")
    trainer = SegmentRewardTrainer(model, config, train_set, tokenizer, eval_dataset=eval_set,
                                   callbacks=[JsonlLogger(out / "metrics.jsonl")])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    if eval_set is not None:
        trainer.evaluate()
    trainer.save_model(str(out / "final"))
    tokenizer.save_pretrained(out / "final")
    return out


@torch.no_grad()
def score_pairs(model, rows: list[dict[str, Any]], pad_token_id: int, batch_size: int = 32) -> list[dict[str, Any]]:
    """Score prepared pairs with a reward model, as it reads them (its variant).

    Returns one dict per row: ``chosen`` and ``rejected``, each ``{"segment_rewards": [...], "segment_spans":
    [(start, end), ...], "score": e}``, spans in token positions of the row's ``*_ids``, ``score`` the mean of the
    segment rewards (NaN for a response with no segment).
    """
    from segrl import segment_rm
    from segrl import segmentation as seg
    from segrl.trainers.segment_rm import SegmentPreferenceCollator

    variant, _ = segment_rm.segmentation_of(model)
    device = next(model.parameters()).device
    collate = SegmentPreferenceCollator(pad_token_id)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = collate(chunk)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        token_scores = logits[..., 0].float().cpu()
        segment_ids = segment_rm.variant_segment_ids(batch["segment_ids"], batch["completion_mask"], variant)
        rewards = segment_rm.segment_rewards(token_scores, segment_ids)
        scores = segment_rm.sequence_scores(token_scores, segment_ids)
        results = []
        for i in range(len(segment_ids)):
            spans = seg.segment_spans(segment_ids[i])
            results.append({"segment_rewards": rewards[i, : len(spans)].tolist(), "segment_spans": spans,
                            "score": float(scores[i])})
        out.extend({"chosen": c, "rejected": r} for c, r in zip(results[: len(chunk)], results[len(chunk) :]))
    return out


def fit_normalizer(reward_model: str, data_file: str, output: str | Path, batch_size: int = 32,
                   sigma_floor: float | None = None) -> dict[str, Any]:
    """Fit the normaliser of a trained reward model on a prepared held-out file (chosen and rejected responses) and
    save it as JSON: location-aware for the segment and token variants, global for the bandit variant."""
    from transformers import AutoTokenizer

    from segrl.normalizers import GlobalNormalizer, LocationNormalizer
    from segrl.segment_rm import load_reward_model, segmentation_of

    model = load_reward_model(reward_model)
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    rows = _read_prepared(data_file)
    scored = score_pairs(model, rows, tokenizer.pad_token_id or 0, batch_size)
    rewards, positions, skipped = [], [], 0
    for pair in scored:
        for side in ("chosen", "rejected"):
            values = pair[side]["segment_rewards"]
            if not values or not all(math.isfinite(v) for v in values):
                skipped += 1
                continue
            rewards += values
            positions += [(k + 1) / len(values) for k in range(len(values))]
    variant, _ = segmentation_of(model)
    rewards_t = torch.tensor(rewards, dtype=torch.float64)
    if variant == "bandit":
        normalizer = GlobalNormalizer.fit(rewards_t)
    else:
        normalizer = LocationNormalizer.fit(rewards_t, torch.tensor(positions, dtype=torch.float64), sigma_floor)
    normalizer.save(output)
    return {"variant": variant, "responses": 2 * len(rows) - skipped, "skipped_responses": skipped,
            "segments": len(rewards), "normalizer": asdict(normalizer)}
