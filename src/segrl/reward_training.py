"""Train and use segment reward models: the library behind ``segrl prepare-segments``, ``segrl train rm`` and
``segrl fit-normalizer``.

The pipeline of Yin et al. 2025 on any ``prompt/chosen/rejected`` data:

1. :func:`prepare` cuts every response with the reference model's entropy (:mod:`segrl.prepare`) and stamps each
   row with the threshold (``segment_threshold``) and the model (``segment_reference``);
2. :func:`train_reward_model` trains a :class:`segrl.trainers.segment_rm.SegmentRewardTrainer` on the prepared
   file and writes ``final/`` (the model, safetensors, and its tokenizer), ``config.json``, ``metrics.jsonl`` and,
   at the end, ``report.html`` (:func:`segrl.report.write_run_report`);
3. :func:`fit_normalizer` scores a held-out prepared file with the trained model and fits the location-aware
   normaliser (segment and token variants) or the global one (bandit) into a JSON file;
4. ``segrl train dense --reward_model DIR --normalizer FILE`` uses both as the dense reward of RL.

:func:`score_pairs` gives the per-segment rewards of prepared pairs, for evaluation (pairwise accuracy,
localisation).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from segrl.checkpoints import METRICS, RESUME_HELP, start_run
from segrl.errors import UserError

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
    resume: bool = field(default=False, metadata={"help": RESUME_HELP})


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


def _int_list(value, where: str, name: str, low: int, high: int | None = None) -> None:
    """Raise :class:`UserError` unless ``value`` is a list of integers in [low, high)."""
    if all(type(x) is int for x in value) and (  # the fast path (bool is not int here)
            not value or (min(value) >= low and (high is None or max(value) < high))):
        return
    for position, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, int) or x < low or (high is not None and x >= high):
            expected = f"an integer in [{low}, {high})" if high is not None else f"an integer >= {low}"
            raise UserError(f"{where}: field '{name}' should hold {expected} at every position, got {x!r:.40} at "
                            f"position {position} (prepare the file with `segrl prepare-segments`)")


def _check_prepared_row(row: dict[str, Any], where: str) -> None:
    """The column contract of a prepared row (:mod:`segrl.prepare`): token ids, one segment id (>= -1) per token,
    a prompt length that leaves a response, a finite threshold."""
    for side in ("chosen", "rejected"):
        ids, segments = row[f"{side}_ids"], row[f"{side}_segment_ids"]
        _int_list(ids, where, f"{side}_ids", 0)
        _int_list(segments, where, f"{side}_segment_ids", -1, len(ids))
        if len(segments) != len(ids):
            raise UserError(f"{where}: field '{side}_segment_ids' has {len(segments)} entries for {len(ids)} tokens in "
                            f"'{side}_ids'; expected one per token")
        if isinstance(row["prompt_length"], bool) or not 0 <= row["prompt_length"] < len(ids):
            raise UserError(f"{where}: field 'prompt_length' is {row['prompt_length']}, but '{side}_ids' holds "
                            f"{len(ids)} tokens; expected 0 <= prompt_length < the number of tokens")
    threshold = row.get("segment_threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise UserError(f"{where}: field 'segment_threshold' should be a finite number, got {threshold!r:.40}")


def _read_prepared(path: str) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a prepared file with their line numbers, each checked by :func:`_check_prepared_row`."""
    from segrl.files import read_jsonl_numbered
    from segrl.trainers.segment_rm import PREPARED_COLUMNS

    try:
        numbered = read_jsonl_numbered(path, {name: list if name != "prompt_length" else int
                                              for name in PREPARED_COLUMNS})
    except UserError as err:
        raise UserError(f"{err} (prepare the file with `segrl prepare-segments`)") from None
    for line, row in numbered:
        _check_prepared_row(row, f"{path}, line {line}")
    return numbered


def _check_vocabulary(path: str, numbered: list[tuple[int, dict[str, Any]]], model) -> None:
    """Raise :class:`UserError` at the first token id ``model`` has no embedding for, or the first sequence longer
    than its context (``max_position_embeddings``)."""
    vocab_size = model.config.vocab_size
    context = getattr(model.config, "max_position_embeddings", None)
    for line, row in numbered:
        for side in ("chosen", "rejected"):
            ids = row[f"{side}_ids"]
            _int_list(ids, f"{path}, line {line}", f"{side}_ids", 0, vocab_size)
            if context is not None and len(ids) > context:
                raise UserError(f"{path}, line {line}: field '{side}_ids' holds {len(ids)} tokens, more than the "
                                f"model's context of {context}; prepare the file with --max-length")


def _prepared(path: str) -> tuple[list[tuple[int, dict[str, Any]]], Any, Any]:
    """``(numbered rows, threshold, reference model)`` of a prepared file; all rows must share the last two."""
    numbered = _read_prepared(path)
    thresholds = {row.get("segment_threshold") for _, row in numbered}
    references = {row.get("segment_reference") for _, row in numbered}
    if len(thresholds) != 1 or len(references) != 1:
        raise UserError(f"{path}: the rows were segmented with different thresholds or reference models "
                        f"({sorted(map(str, thresholds))}, {sorted(map(str, references))})")
    return numbered, thresholds.pop(), references.pop()


def _dataset(numbered: list[tuple[int, dict[str, Any]]]):
    from datasets import Dataset

    from segrl.trainers.segment_rm import PREPARED_COLUMNS

    columns = [*PREPARED_COLUMNS, "segment_threshold"]
    return Dataset.from_list([{name: row.get(name) for name in columns} for _, row in numbered])


class JsonlLogger(TrainerCallback):
    """Append every trainer log to a JSONL file (with its step), flushed line by line, so a crash loses nothing
    logged (main process only). The file is started, or cut back for a resumed run, by
    :func:`segrl.checkpoints.start_run`."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")


def train_reward_model(run: RewardRunArguments, config) -> Path:
    """Train a segment reward model (``config``: a ``SegmentRewardConfig``); return the output directory."""
    from safetensors import SafetensorError
    from transformers import PrinterCallback

    from segrl.models import refuse_remote_code, resolve_model_path
    from segrl.report import write_run_report
    from segrl.segment_rm import new_reward_model
    from segrl.trainers.segment_rm import SegmentRewardTrainer
    from segrl.training import run_record

    if not run.train_file:
        raise UserError("--train_file is required: a JSONL prepared with `segrl prepare-segments`")
    train_rows, threshold, reference = _prepared(run.train_file)
    eval_rows = _prepared(run.eval_file)[0] if run.eval_file else None
    path = resolve_model_path(run.model, cache_dir=run.cache_dir, seed=config.seed)
    backbone = _model_identity(run.model, path)
    if reference is not None and reference != backbone:  # the segments are the reference model's: same model
        raise UserError(
            f"{run.train_file} was segmented by {reference}, but the reward model would start from {backbone}; "
            "use the same model (for tiny-<task> presets also the same --seed)"
        )
    refuse_remote_code(path, "backbone model")
    tokenizer = _tokenizer(path)
    try:
        model = new_reward_model(path, config.variant, threshold if config.variant == "segment" else None,
                                 seed=config.seed)
    except SafetensorError as err:  # new_reward_model reports unreadable directories, not damaged weights
        raise UserError(f"Cannot build a reward model on '{path}': damaged weights ({err})") from err
    _check_vocabulary(run.train_file, train_rows, model)
    if eval_rows is not None:
        _check_vocabulary(run.eval_file, eval_rows, model)
    train_set, eval_set = _dataset(train_rows), _dataset(eval_rows) if eval_rows is not None else None

    out = Path(config.output_dir)
    resolved = {"method": "rm", "run": asdict(run), "trainer": config.to_dict(), "segment_threshold": threshold,
                **run_record()}
    main_process = config.process_index == 0
    checkpoint = start_run(out, run.resume, resolved, main_process)
    trainer = SegmentRewardTrainer(model, config, train_set, tokenizer, eval_dataset=eval_set,
                                   callbacks=[JsonlLogger(out / METRICS)])
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=checkpoint)
    if eval_set is not None:
        trainer.evaluate()
    save_final(trainer, out, tokenizer)
    write_run_report(out, main_process)  # last: a report that fails is a warning, the run stays complete
    return out


def save_final(trainer, out: Path, tokenizer=None, extra=None) -> Path:
    """Save the trained model (and ``tokenizer``; ``extra(directory)`` writes any other file) into ``out/final``
    so that it appears complete or not at all: everything goes to ``final.partial`` first, which then replaces
    ``final`` (:func:`segrl.files.replace_dir`). Every process calls it (sharded models are gathered); the main
    one writes."""
    from segrl.files import replace_dir

    partial = out / "final.partial"
    if trainer.is_world_process_zero():
        shutil.rmtree(partial, ignore_errors=True)  # left by a run that crashed while saving
    trainer.save_model(str(partial))
    if trainer.is_world_process_zero():
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        if extra is not None:
            extra(partial)
        replace_dir(partial, out / "final")
    return out / "final"


def _tokenizer(path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot load the tokenizer at '{path}': {str(err).strip().splitlines()[0]}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
    from safetensors import SafetensorError

    from segrl.models import refuse_remote_code
    from segrl.normalizers import GlobalNormalizer, LocationNormalizer
    from segrl.segment_rm import load_reward_model, segmentation_of

    refuse_remote_code(reward_model, "reward model")
    try:
        model = load_reward_model(reward_model)
    except SafetensorError as err:  # load_reward_model reports unreadable directories, not damaged weights
        raise UserError(f"Cannot load the reward model at '{reward_model}': damaged weights ({err})") from err
    tokenizer = _tokenizer(reward_model)
    numbered = _read_prepared(data_file)
    _check_vocabulary(data_file, numbered, model)
    rows = [row for _, row in numbered]
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
