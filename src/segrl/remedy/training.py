"""Train a ReMedy model: the library behind ``segrl remedy train``.

Tan & Monz 2025 (arXiv 2504.13630): a decoder LM with a one-scalar head (``AutoModelForSequenceClassification``,
``num_labels=1``, read at the last token) is trained on preference pairs of translations of the same source
(:mod:`segrl.remedy.data`) with :class:`segrl.trainers.remedy.RemedyTrainer` (TRL's ``RewardTrainer``): the
Bradley-Terry loss −log σ(r(x, y⁺) − r(x, y⁻)) plus the reward regulariser λ·(r⁺ + r⁻)², TRL's
``center_rewards_coefficient`` (0.01 by default: the paper's λ is not in the spec; TRL's documentation suggests
0.01). Inputs are the translation requests of
:mod:`segrl.remedy.inputs`, reference-based, or reference-free with ``--no_ref``.

:func:`train_remedy`:

1. reads rated translations (``--train_file``: JSONL/TSV, see :func:`segrl.remedy.data.read_ratings`; ``--wmt_dir``
   with ``--wmt_lps``: WMT's mt-metrics-eval layout, :func:`segrl.remedy.data.read_wmt`; or the ``toymt`` task's
   ratings of ``--year``), holds out ``--test_fraction`` of the *sources* (never a source in both);
2. builds pairs (ties dropped, ``--min_gap``), tokenizes them once, and trains;
3. scores the held-out ratings (or, with no held-out source, the training ones) and fits the calibration
   temperature on them (:mod:`segrl.remedy.calibration`; per language pair with ``--per_lp_calibration``);
4. writes ``final/`` (model and tokenizer, safetensors; ``remedy.json``; ``calibration.json``),
   ``config.json`` and ``metrics.jsonl`` (TRL's ``accuracy``, ``margin``, ... per logging step) into
   ``output_dir``, with ``checkpoint-<step>/`` every ``save_steps`` steps (``--resume`` continues from the newest
   complete one: :mod:`segrl.checkpoints`), and last ``report.html`` (:func:`segrl.report.write_run_report`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from segrl.checkpoints import METRICS, RESUME_HELP, start_run
from segrl.errors import UserError
from segrl.files import write_text_atomic

__all__ = ["RemedyRunArguments", "load_ratings", "train_remedy"]


@dataclass
class RemedyRunArguments:
    """What to train on; the trainer's own fields live in :class:`segrl.trainers.remedy.RemedyConfig`."""

    train_file: str | None = field(
        default=None, metadata={"help": "Rated translations (.jsonl or .tsv: lp, src, mt, system, score[, ref, item]); "
                                        "default: the toymt task's ratings of --year."})
    wmt_dir: str | None = field(
        default=None, metadata={"help": "An mt-metrics-eval data directory (WMT layout: sources/, references/, "
                                        "system-outputs/, human-scores/) instead of --train_file."})
    wmt_lps: list[str] | None = field(default=None, metadata={"help": "Language pairs to read from --wmt_dir."})
    wmt_ref: str = field(default="refA", metadata={"help": "Reference name in --wmt_dir (references/<lp>.<ref>.txt)."})
    wmt_scores: str = field(default="mqm", metadata={"help": "Human scores in --wmt_dir (<lp>.seg.<name>.score)."})
    year: str = field(default="2023", metadata={"help": "toymt year to train on when no --train_file is given."})
    num_sources: int = field(default=400, metadata={"help": "toymt sources per language pair."})
    model: str = field(default="tiny-toymt", metadata={"help": "Backbone: a preset, a local directory or a hub id."})
    test_fraction: float = field(default=0.1, metadata={"help": "Share of sources held out (calibration, eval)."})
    min_gap: float = field(default=0.0, metadata={"help": "Drop pairs whose human scores differ by less than this."})
    no_ref: bool = field(default=False, metadata={"help": "Reference-free (quality estimation): no reference shown."})
    per_lp_calibration: bool = field(default=False, metadata={"help": "One calibration temperature per language pair."})
    cache_dir: str | None = field(default=None, metadata={"help": "Preset cache [default: $SEGRL_CACHE]."})
    resume: bool = field(default=False, metadata={"help": RESUME_HELP})


def load_ratings(run: RemedyRunArguments, seed: int = 0):
    """The rated translations of ``run``: its file, its WMT directory's language pairs, or the toymt task's ratings
    of ``run.year``."""
    from segrl.remedy.data import ratings_from_rows, read_ratings, read_wmt

    if run.train_file and run.wmt_dir:
        raise UserError("give --train_file or --wmt_dir, not both")
    if run.train_file:
        return read_ratings(run.train_file)
    if run.wmt_dir:
        if not run.wmt_lps:
            raise UserError("--wmt_dir needs --wmt_lps (the language pairs to read, e.g. en-de zh-en)")
        ratings = []
        for lp in run.wmt_lps:
            rated, unrated = read_wmt(run.wmt_dir, lp, ref=run.wmt_ref, scores=run.wmt_scores)
            print(f"{lp}: {len(rated)} rated translations ({unrated} unrated skipped) from {run.wmt_dir}", flush=True)
            ratings += rated
        return ratings
    from segrl.tasks import toymt

    if run.year not in toymt.YEARS:
        raise UserError(f"--year must be one of {', '.join(toymt.YEARS)}, got {run.year!r}")
    return ratings_from_rows(toymt.make_ratings(run.year, num_sources=run.num_sources, seed=seed),
                             f"toymt {run.year}")


def _pair_dataset(pairs: list[dict], tokenizer, reference_free: bool):
    from datasets import Dataset

    from segrl.remedy.inputs import encode

    def ids(pair, side):
        return encode(tokenizer, pair["src"], pair[side], pair["lp"], None if reference_free else pair["ref"])

    return Dataset.from_list([{"chosen_ids": ids(p, "chosen"), "rejected_ids": ids(p, "rejected")} for p in pairs])


def train_remedy(run: RemedyRunArguments, config) -> Path:
    """Train a ReMedy model (``config``: :class:`segrl.trainers.remedy.RemedyConfig`) with
    :class:`segrl.trainers.remedy.RemedyTrainer`; return the output directory (module docstring)."""
    from transformers import AutoModelForSequenceClassification, PrinterCallback, set_seed

    from segrl.models import load_pretrained, resolve_model_path
    from segrl.remedy.calibration import fit_calibration
    from segrl.remedy.data import make_pairs, split_by_source
    from segrl.remedy.scoring import CALIBRATION, MODEL_INFO, score
    from segrl.report import write_run_report
    from segrl.reward_training import JsonlLogger, save_final
    from segrl.trainers.remedy import RemedyTrainer
    from segrl.training import run_record

    ratings = load_ratings(run, seed=config.seed)
    if not run.no_ref and any(r.ref is None for r in ratings):
        raise UserError("some ratings have no reference (field 'ref'): train reference-free with --no_ref, or add them")
    train_ratings, held_out = split_by_source(ratings, run.test_fraction, seed=config.seed)
    pairs, counts = make_pairs(train_ratings, run.min_gap)
    path = resolve_model_path(run.model, cache_dir=run.cache_dir, seed=config.seed)
    set_seed(config.seed)  # the scalar head is new: its initialisation is part of the run
    model, tokenizer = load_pretrained(path, AutoModelForSequenceClassification, name=run.model, num_labels=1)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    eval_set = None
    if held_out:
        try:
            eval_set = _pair_dataset(make_pairs(held_out, run.min_gap)[0], tokenizer, run.no_ref)
        except UserError:  # held-out sources without a scored difference: nothing to evaluate pairwise
            eval_set = None

    out = Path(config.output_dir)
    resolved = {"method": "remedy", "run": asdict(run), "trainer": config.to_dict(), "pairs": counts,
                "ratings": {"train": len(train_ratings), "held_out": len(held_out)}, **run_record()}
    main_process = config.process_index == 0
    checkpoint = start_run(out, run.resume, resolved, main_process)
    print(f"{len(ratings)} ratings -> {counts['pairs']} training pairs ({counts['ties']} ties dropped, "
          f"{counts['below_min_gap']} below min_gap); {len(held_out)} held-out ratings", flush=True)

    trainer = RemedyTrainer(model=model, args=config, train_dataset=_pair_dataset(pairs, tokenizer, run.no_ref),
                            eval_dataset=eval_set, processing_class=tokenizer, callbacks=[JsonlLogger(out / METRICS)])
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=checkpoint)

    model = trainer.model.eval()
    fit_on = held_out or train_ratings
    raw = score(model, tokenizer, [r.src for r in fit_on], [r.mt for r in fit_on], [r.lp for r in fit_on],
                None if run.no_ref else [r.ref for r in fit_on], batch_size=config.per_device_eval_batch_size)
    calibration = fit_calibration(raw, [r.lp for r in fit_on], per_lp=run.per_lp_calibration)
    info = {"reference_free": run.no_ref, "language_pairs": sorted({r.lp for r in ratings}),
            "backbone": run.model, "calibrated_on": "held-out" if held_out else "train"}

    def extra(directory: Path) -> None:  # the model directory is complete (calibrated) or absent, never between
        calibration.save(directory / CALIBRATION)
        write_text_atomic(directory / MODEL_INFO, json.dumps(info, indent=2) + "\n")

    save_final(trainer, out, extra=extra)  # with the tokenizer (the trainer's processing class)
    write_run_report(out, main_process)  # last: a report that fails is a warning, the run stays complete
    return out
