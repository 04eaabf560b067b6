"""Score translations with a ReMedy model: raw scores, sigmoid, calibrated; the library behind `segrl remedy score`.

A ReMedy model directory (from :func:`segrl.remedy.training.train_remedy`) holds a one-label
``AutoModelForSequenceClassification`` (safetensors), its tokenizer, ``remedy.json`` (whether it reads references)
and ``calibration.json`` (:mod:`segrl.remedy.calibration`). :func:`score` batches the inputs of
:func:`segrl.remedy.inputs.encode` (longest first, to pad little); the head reads the last token (the model's
``pad_token_id`` marks padding).

:func:`score_files` is the file interface of the released tool: source, hypothesis and (or not) reference files of
equal line counts (a mismatch is an error, never a truncation), one language pair; it writes into an output
directory ``scores.tsv`` (line, raw, sigmoid, calibrated), ``result.json`` (the system score, i.e. the mean of the
segment scores, and a SacreBLEU-style signature string) and prints the system score. Files are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from segrl.errors import UserError
from segrl.files import write_text_atomic
from segrl.remedy.calibration import Calibration
from segrl.remedy.data import read_lines
from segrl.remedy.inputs import encode, split_lp

__all__ = ["load_remedy", "score", "score_files"]

MODEL_INFO = "remedy.json"
CALIBRATION = "calibration.json"


def load_remedy(path: str | Path, device: str | None = None):
    """``(model, tokenizer, info, calibration)`` of a ReMedy model directory, the model in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    shown, path = str(path), Path(path)  # name it as given ("./x", not "x")
    if not path.is_dir():
        raise UserError(f"{shown}: model directory not found (a ReMedy model directory, from `segrl remedy train`)")
    if not (path / MODEL_INFO).is_file():
        raise UserError(f"{shown}: not a ReMedy model directory (no {MODEL_INFO}; train one with `segrl remedy train`)")
    try:
        info = json.loads((path / MODEL_INFO).read_text(encoding="utf-8"))
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: damaged weights
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: cannot load the ReMedy model ({reason})") from err
    if not isinstance(info, dict):
        raise UserError(f"{path / MODEL_INFO}: expected a JSON object, got {type(info).__name__}")
    calibration = Calibration.load(path / CALIBRATION) if (path / CALIBRATION).is_file() else None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer, info, calibration


@torch.no_grad()
def score(model, tokenizer, sources: list[str], hypotheses: list[str], lps: list[str],
          references: list[str] | None = None, batch_size: int = 32, progress=None,
          names: list[str] | None = None) -> np.ndarray:
    """Raw scores, shape (N,), of N translations (``lps``: one language pair per row; ``references``: None for the
    reference-free mode). ``progress(done)`` is called after each batch. A translation whose request is longer than
    the model's context is a :class:`UserError` naming it by ``names`` (default "translation i", from 1)."""
    refs = references if references is not None else [None] * len(sources)
    encoded = [encode(tokenizer, s, h, lp, r) for s, h, lp, r in zip(sources, hypotheses, lps, refs)]
    context = getattr(model.config, "max_position_embeddings", None)
    for i, ids in enumerate(encoded):
        if context is not None and len(ids) > context:
            where = names[i] if names is not None else f"translation {i + 1}"
            raise UserError(f"{where}: the translation request is {len(ids)} tokens, longer than the model's "
                            f"context of {context}; nothing was scored")
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    scores = np.empty(len(encoded))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, i in enumerate(rows):  # the head reads each row's last non-pad token
            ids[k, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[k, width - len(encoded[i]):] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        scores[rows] = logits[:, 0].float().cpu().numpy()
        if progress is not None:
            progress(min(start + batch_size, len(order)))
    return scores


def score_files(model_dir: str | Path, src: str | Path, mt: str | Path, lp: str, output_dir: str | Path,
                ref: str | Path | None = None, batch_size: int = 32, progress=None) -> dict:
    """Score the lines of ``mt`` (translations of ``src``, optionally with ``ref``); write ``scores.tsv`` and
    ``result.json`` into ``output_dir`` and return the result (module docstring)."""
    split_lp(lp, "--lp")
    model, tokenizer, info, calibration = load_remedy(model_dir)
    if info.get("reference_free") and ref is not None:
        raise UserError(f"{model_dir} was trained reference-free: score without --ref (use --no-ref)")
    if not info.get("reference_free") and ref is None:
        raise UserError(f"{model_dir} was trained with references: give --ref")
    files = {"source": src, "hypothesis": mt, **({"reference": ref} if ref is not None else {})}
    lines = {what: read_lines(path, what) for what, path in files.items()}
    counts = {what: len(v) for what, v in lines.items()}
    if len(set(counts.values())) > 1:
        raise UserError("the files have different line counts: "
                        + ", ".join(f"{files[w]} {n}" for w, n in counts.items()))
    for number, hypothesis in enumerate(lines["hypothesis"], start=1):
        if not hypothesis.strip():
            raise UserError(f"{mt}:{number}: empty hypothesis")
    raw = score(model, tokenizer, lines["source"], lines["hypothesis"], [lp] * counts["hypothesis"],
                lines.get("reference"), batch_size=batch_size, progress=progress,
                names=[f"{mt}:{number}" for number in range(1, counts["hypothesis"] + 1)])
    if not np.isfinite(raw).all():
        bad = int(np.flatnonzero(~np.isfinite(raw))[0]) + 1
        raise UserError(f"{mt}:{bad}: the model gave a non-finite score; nothing was written")
    sigmoid = 1 / (1 + np.exp(-raw))
    calibrated = calibration.apply(raw, [lp] * len(raw)) if calibration is not None else sigmoid
    out = Path(output_dir)
    rows = ["line\traw\tsigmoid\tcalibrated"]
    rows += [f"{i + 1}\t{r:.6f}\t{s:.6f}\t{c:.6f}" for i, (r, s, c) in enumerate(zip(raw, sigmoid, calibrated))]
    write_text_atomic(out / "scores.tsv", "\n".join(rows) + "\n")
    temperature = calibration.temperature(lp) if calibration is not None else 1.0
    signature = (f"segrl-remedy|model:{Path(model_dir).resolve().name}|ref:{'no' if ref is None else 'yes'}|"
                 f"lp:{lp}|calib:T={temperature:.4g}|version:{_version()}")
    result = {"signature": signature, "lines": len(raw), "system_score": {
        "raw": float(raw.mean()), "sigmoid": float(sigmoid.mean()), "calibrated": float(np.mean(calibrated))},
        "files": {w: str(p) for w, p in files.items()}}
    write_text_atomic(out / "result.json", json.dumps(result, indent=2) + "\n")
    return result


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("segrl")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"
