"""Builder of the ``tiny-<task>`` model presets: a small Llama trained from scratch on a built-in task.

:func:`build_tiny` writes a Hugging Face model directory that loads offline with
``AutoModelForCausalLM.from_pretrained(dir)`` / ``AutoTokenizer.from_pretrained(dir)``:

1. **Tokenizer** (:func:`build_tokenizer`): byte-level BPE trained with ``tokenizers`` on the task's
   ``corpus()``, digits always split one per token (so every number is spelled digit by digit), exact
   round trip of any text (byte-level, no normalisation, no clean-up of spaces). Special tokens ``<pad>`` (id 0),
   ``<s>`` (BOS, id 1, prepended to every encoded text) and ``</s>`` (EOS, id 2). ``vocab_size=259`` (bytes +
   specials, no merges) gives a character-level tokenizer; the default BPE (512 at most; 396 for arith) keeps
   the template words whole, so a prompt is about 3x fewer tokens than characters and training costs about
   half as much, while numbers are still digit by digit. Saved as a ``PreTrainedTokenizerFast``.
2. **Model** (:func:`make_model`): ``LlamaForCausalLM`` with tied embeddings, initialised from ``seed``.
   Sizes (:data:`SIZES`), parameter counts with the ``arith`` tokenizer (396 tokens):

   ========  ======  ======  =====  ============  ==========  ==============================================
   size      layers  hidden  heads  intermediate  parameters  use
   ========  ======  ======  =====  ============  ==========  ==============================================
   test      2       64      2      128           0.11M       unit tests (seconds); learns the format only
   small     4       128     4      512           1.10M       the default; calibrated (below)
   base      6       256     8      1024          6.40M       not calibrated; about 6x the compute of small
   ========  ======  ======  =====  ============  ==========  ==============================================

3. **SFT warm start** with TRL's ``SFTTrainer`` on ``task.make_dataset("train", steps * batch_size, seed)``
   (prompt/completion data: TRL 1.16 appends the EOS token to each completion, tokenizes prompt and
   prompt+completion, and with ``completion_only_loss`` computes the loss on the completion tokens, EOS
   included, so the model learns to stop). One epoch over fresh problems, AdamW (beta2 0.98, no weight decay),
   cosine schedule with 5% warmup, gradient clipping 1.0, fp32, no reporting integrations; the trainer's
   ``output_dir`` is a temporary directory that is deleted afterwards, so nothing but ``out_dir`` is written.
4. **Evaluation** (:func:`evaluate`) on ``eval_examples`` problems of the task's ``test`` split (disjoint from
   the training problems): greedy, and sampled at T=1 with no top-k/top-p, scored with the task's own reward.
   The results, and the held-out demonstration NLL before and after SFT, go into ``preset.json``.

Default SFT budgets (:data:`SFT_DEFAULTS`): ``test`` 30 steps x 16 problems at lr 3e-3; ``small`` 600 x 32 at
3e-3; ``base`` 600 x 32 at 1e-3 (a guess, not measured).

Calibration of ``tiny-arith`` ``small`` at the default arith difficulty (3 steps, operands up to 15, + - x2 x3),
``python benchmarks/tiny_sft.py --task arith --size small --seeds 0 1 2`` on this project's 2-core CPU machine,
1 torch thread, 500 held-out problems, 2026-11-27:

====  ==========  =====  ======  ======  =======================  ===============  ===============
seed  parameters  steps  batch   SFT s   wall s (incl. eval)      greedy accuracy  sampled T=1
====  ==========  =====  ======  ======  =======================  ===============  ===============
0     1.10M       600    32      190     212                      0.450            0.262
1     1.10M       600    32      190     212                      0.288            0.196
2     1.10M       600    32      185     204                      0.332            0.224
====  ==========  =====  ======  ======  =======================  ===============  ===============

Held-out demonstration NLL per token went from about 5.97 (untrained) to 0.107-0.128. How the difficulty was
chosen is in :mod:`segrl.tasks.arith`. Threads: the machine's two cores are shared with other jobs; two torch
threads ran 1.4x faster than one when the machine was idle and several times slower when another job held a
core, so one thread is the robust choice there (``torch.set_num_threads(1)`` before :func:`build_tiny`; this
module leaves the thread count alone).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from segrl.errors import UserError

PAD, BOS, EOS = "<pad>", "<s>", "</s>"

#: Model sizes: LlamaConfig fields that differ between sizes.
SIZES: dict[str, dict[str, int]] = {
    "test": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
    "small": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512},
    "base": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 1024},
}

#: Default SFT budget per size: optimizer steps, problems per step, peak learning rate.
SFT_DEFAULTS: dict[str, dict[str, Any]] = {
    "test": {"steps": 30, "batch_size": 16, "learning_rate": 3e-3},
    "small": {"steps": 600, "batch_size": 32, "learning_rate": 3e-3},
    "base": {"steps": 600, "batch_size": 32, "learning_rate": 1e-3},
}

#: Version of the build recipe (tokenizer, model sizes, SFT defaults, the tasks' default difficulty). Part of the
#: preset cache key in :mod:`segrl.models`: bump it whenever a change would make a rebuilt preset differ.
RECIPE_VERSION = 1

#: Tokenizer vocabulary size by default: 256 bytes + 3 specials + merges.
DEFAULT_VOCAB_SIZE = 512
#: Longest sequence (prompt + completion tokens) the model is built for.
MAX_POSITIONS = 512


def _resolve_task(task: str | ModuleType) -> ModuleType:
    if not isinstance(task, str):  # a task module, or anything with its ``reward`` (segrl.user_data)
        return task
    from segrl.tasks import get_task

    return get_task(task)


def _task_name(task: str | ModuleType) -> str:
    return task if isinstance(task, str) else task.__name__.rsplit(".", 1)[-1]


# ----------------------------------------------------------------------------------------------------------------
# tokenizer and model


def check_request(task: str, size: str) -> None:
    """Raise :class:`UserError` now, before any building, if ``task`` is not a built-in task or ``size`` is not a
    model size (cheap: imports the task module only)."""
    _resolve_task(task)
    if size not in SIZES:
        raise UserError(f"Unknown tiny model size {size!r}; the sizes are: {', '.join(SIZES)}")


def build_tokenizer(task: str | ModuleType, seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE):
    """A ``PreTrainedTokenizerFast`` trained on ``task.corpus(seed)`` (see the module docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    n_base = len(pre_tokenizers.ByteLevel.alphabet()) + 3
    if not isinstance(vocab_size, int) or vocab_size < n_base:
        raise UserError(f"tokenizer vocab_size must be an integer >= {n_base} (bytes + specials), got {vocab_size!r}")
    texts = _resolve_task(task).corpus(seed)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
        padding_side="right",
    )
    return tokenizer


def make_model(size: str, tokenizer, seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` of ``size`` for ``tokenizer`` (same seed, same weights)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        raise UserError(f"Unknown tiny model size {size!r}; the sizes are: {', '.join(SIZES)}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SIZES[size],
    )
    saved_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(saved_state)  # leave the caller's global RNG as it was
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def num_parameters(model) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# evaluation


def generate_completions(
    model,
    tokenizer,
    prompts: list[str],
    greedy: bool = True,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    add_special_tokens: bool = True,
) -> list[str]:
    """Completions of ``prompts`` (plain strings), batched with left padding; special tokens are stripped.
    ``add_special_tokens=False`` for prompts that already hold them (a rendered chat template).

    Sampling uses pure ancestral sampling at ``temperature`` (no top-k, no top-p) and torch's global RNG, so
    seed it (``torch.manual_seed``) for a reproducible draw.
    """
    import torch

    if not greedy and not temperature > 0:
        raise UserError(f"sampling temperature must be > 0, got {temperature!r}")
    old_side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    out: list[str] = []
    gen_kwargs: dict[str, Any] = {"do_sample": False} if greedy else {
        "do_sample": True,
        "temperature": float(temperature),
        "top_k": 0,
        "top_p": 1.0,
    }
    try:
        with torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                batch = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True,
                                  add_special_tokens=add_special_tokens)
                batch = {k: v.to(model.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                ids = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **gen_kwargs,
                )
                out.extend(tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out


def _default_max_new_tokens(tokenizer, dataset) -> int:
    if "completion" not in dataset.column_names or len(dataset) == 0:
        return 128
    longest = max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in dataset["completion"])
    return int(1.5 * longest) + 8


def evaluate(
    model,
    tokenizer,
    task: str | ModuleType,
    dataset,
    greedy: bool,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    seed: int | None = 0,
) -> float:
    """Mean task reward (for arith: accuracy) of the model's completions of ``dataset``'s prompts.

    ``max_new_tokens=None`` allows 1.5x the longest demonstration plus 8 tokens. ``seed`` (when not None) seeds
    torch's global RNG before sampling. A reward of None (not applicable) counts as 0.
    """
    scores = evaluate_metrics(model, tokenizer, task, dataset, greedy, temperature, max_new_tokens, batch_size, seed)
    return scores[getattr(_resolve_task(task), "score_name", "accuracy")]


def evaluate_metrics(
    model,
    tokenizer,
    task: str | ModuleType,
    dataset,
    greedy: bool,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    seed: int | None = 0,
) -> dict[str, float]:
    """:func:`evaluate`'s ``accuracy`` plus the task's own held-out metrics of the same completions, for a task
    that defines ``metrics(prompts, completions, **columns) -> dict[str, float]`` (``grounding``: format rate,
    box and mask IoU)."""
    import torch

    task_mod = _resolve_task(task)
    if len(dataset) == 0:
        raise UserError("evaluate: the dataset is empty")
    if max_new_tokens is None:
        max_new_tokens = _default_max_new_tokens(tokenizer, dataset)
    if seed is not None:
        torch.manual_seed(seed)
    prompts = list(dataset["prompt"])
    completions = generate_completions(
        model, tokenizer, prompts, greedy=greedy, temperature=temperature, max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    columns = {c: list(dataset[c]) for c in dataset.column_names if c not in ("prompt", "completion")}
    rewards = task_mod.reward(prompts, completions, **columns)
    score_name = getattr(task_mod, "score_name", "accuracy")  # a built-in task's mean reward is its accuracy
    scores = {score_name: float(sum(r or 0.0 for r in rewards) / len(rewards))}
    if hasattr(task_mod, "metrics"):
        scores.update(task_mod.metrics(prompts, completions, **columns))
    return scores


def completion_nll(model, tokenizer, dataset, batch_size: int = 64) -> float:
    """Mean negative log-likelihood per token of the demonstrations (``completion`` + EOS) given the prompts,
    tokenized the way TRL's SFTTrainer does (BOS + prompt, then completion + EOS)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(dataset), batch_size):
                rows = dataset[i : i + batch_size]
                seqs, masks = [], []
                for p, c in zip(rows["prompt"], rows["completion"]):
                    p_ids = tokenizer(p)["input_ids"]
                    full = tokenizer(p + c + tokenizer.eos_token)["input_ids"]
                    seqs.append(full)
                    masks.append([0] * len(p_ids) + [1] * (len(full) - len(p_ids)))
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
                att = torch.zeros((len(seqs), width), dtype=torch.long)
                lab = torch.zeros((len(seqs), width), dtype=torch.bool)
                for j, (s, m) in enumerate(zip(seqs, masks)):
                    ids[j, : len(s)] = torch.tensor(s)
                    att[j, : len(s)] = 1
                    lab[j, : len(m)] = torch.tensor(m, dtype=torch.bool)
                logits = model(input_ids=ids.to(model.device), attention_mask=att.to(model.device)).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                tok_logp = logp.gather(-1, ids[:, 1:, None].to(model.device)).squeeze(-1)
                m = lab[:, 1:].to(model.device)
                total += float(-(tok_logp * m).sum())
                count += int(m.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


# ----------------------------------------------------------------------------------------------------------------
# build


def _progress_callback(log: Callable[[str], None], total_steps: int):
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def __init__(self) -> None:
            self.start = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or self.start is None:
                return
            step = max(state.global_step, 1)
            elapsed = time.perf_counter() - self.start
            eta = elapsed / step * (total_steps - step)
            log(
                f"sft step {state.global_step}/{total_steps}  loss {logs['loss']:.4f}  "
                f"lr {logs.get('learning_rate', float('nan')):.2e}  {elapsed:.0f}s elapsed, ETA {eta:.0f}s"
            )

    return _Progress()


def build_tiny(
    task: str,
    out_dir: Path,
    size: str = "small",
    seed: int = 0,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    warmup_ratio: float = 0.05,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    difficulty: dict[str, Any] | None = None,
    eval_examples: int = 500,
    eval_batch_size: int = 100,
    log_every: int = 50,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Build the ``tiny-<task>`` preset of ``size`` and ``seed`` into ``out_dir``; return its report.

    ``out_dir`` (created if missing) receives ``config.json``, ``generation_config.json``,
    ``model.safetensors``, the tokenizer files and ``preset.json`` (the returned dict). ``steps``,
    ``batch_size`` and ``learning_rate`` default to :data:`SFT_DEFAULTS` for the size; ``difficulty`` is passed
    to the task's ``make_dataset``; ``eval_examples=0`` skips the evaluation. ``log`` gets one progress line
    every ``log_every`` steps (``None`` for silence).

    The report holds: task, size, seed, num_parameters, vocab_size, sft_steps, batch_size, learning_rate,
    difficulty, sft_seconds, wall_seconds, final_loss, init_completion_nll and completion_nll (held-out
    demonstrations, per token, before and after SFT), eval_examples, greedy_accuracy, sampled_accuracy (T=1),
    and the versions of torch, transformers and trl.
    """
    import datasets
    from accelerate.state import AcceleratorState
    import torch
    import transformers
    import trl
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    check_request(task, size)
    task_mod = _resolve_task(task)
    name = _task_name(task)
    budget = {**SFT_DEFAULTS[size]}
    for key, value in (("steps", steps), ("batch_size", batch_size), ("learning_rate", learning_rate)):
        if value is not None:
            budget[key] = value
    if not isinstance(budget["steps"], int) or budget["steps"] < 1:
        raise UserError(f"steps must be a positive integer, got {budget['steps']!r}")
    if not isinstance(budget["batch_size"], int) or budget["batch_size"] < 1:
        raise UserError(f"batch_size must be a positive integer, got {budget['batch_size']!r}")
    if not budget["learning_rate"] > 0:
        raise UserError(f"learning_rate must be > 0, got {budget['learning_rate']!r}")
    difficulty = dict(difficulty or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(task_mod, seed=seed, vocab_size=vocab_size)
    model = make_model(size, tokenizer, seed=seed)
    n_params = num_parameters(model)
    train = task_mod.make_dataset("train", budget["steps"] * budget["batch_size"], seed=seed, **difficulty)
    test = task_mod.make_dataset("test", eval_examples, seed=seed, **difficulty) if eval_examples > 0 else None
    init_nll = completion_nll(model, tokenizer, test) if test is not None else None
    say(
        f"tiny-{name} {size} seed {seed}: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
        f"SFT {budget['steps']} steps x {budget['batch_size']} problems at lr {budget['learning_rate']:g}"
    )

    with tempfile.TemporaryDirectory(prefix="segrl-sft-") as tmp:
        config = SFTConfig(
            output_dir=tmp,
            max_steps=budget["steps"],
            per_device_train_batch_size=budget["batch_size"],
            learning_rate=budget["learning_rate"],
            lr_scheduler_type="cosine",
            warmup_steps=int(math.ceil(warmup_ratio * budget["steps"])),
            weight_decay=0.0,
            adam_beta2=0.98,
            max_grad_norm=1.0,
            logging_steps=max(1, log_every),
            logging_strategy="steps",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            fp16=False,
            activation_checkpointing=False,
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
            max_length=MAX_POSITIONS,
            completion_only_loss=True,
        )
        bars_were_on = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # TRL's dataset preparation would print five bars
        try:
            trainer = SFTTrainer(
                model=model,
                args=config,
                train_dataset=train,
                processing_class=tokenizer,
                callbacks=[_progress_callback(say, budget["steps"])] if log else None,
            )
        finally:
            if bars_were_on:
                datasets.enable_progress_bars()
        trainer.remove_callback(PrinterCallback)  # our callback prints one line per log instead of the raw dict
        t_sft = time.perf_counter()
        result = trainer.train()
        sft_seconds = time.perf_counter() - t_sft
        model = trainer.model
        del trainer
        # Accelerate keeps one process-wide state; without a reset, the caller's next trainer (e.g. GRPO in bf16 on
        # a GPU) would be refused for asking another mixed precision than this fp32 SFT.
        AcceleratorState._reset_state(reset_partial_state=True)

    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    bars_were_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" for one small file
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        if bars_were_on:
            transformers.utils.logging.enable_progress_bar()
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(out_dir)

    report: dict[str, Any] = {
        "task": name,
        "size": size,
        "seed": seed,
        "num_parameters": n_params,
        "vocab_size": len(tokenizer),
        "sft_steps": budget["steps"],
        "batch_size": budget["batch_size"],
        "learning_rate": budget["learning_rate"],
        "difficulty": difficulty,
        "sft_seconds": round(sft_seconds, 1),
        "final_loss": round(float(result.training_loss), 4),
        "eval_examples": eval_examples,
        "init_completion_nll": None if init_nll is None else round(init_nll, 4),
        "completion_nll": None,
        "greedy_accuracy": None,
        "sampled_accuracy": None,
    }
    if test is not None:
        report["completion_nll"] = round(completion_nll(model, tokenizer, test), 4)
        report["greedy_accuracy"] = evaluate(model, tokenizer, task_mod, test, greedy=True, batch_size=eval_batch_size)
        report["sampled_accuracy"] = evaluate(
            model, tokenizer, task_mod, test, greedy=False, temperature=1.0, batch_size=eval_batch_size, seed=seed
        )
        say(
            f"held-out ({eval_examples} problems): greedy {report['greedy_accuracy']:.3f}, "
            f"sampled T=1 {report['sampled_accuracy']:.3f}, completion NLL {init_nll:.3f} -> "
            f"{report['completion_nll']:.3f}"
        )
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
    (out_dir / "preset.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


__all__ = [
    "RECIPE_VERSION",
    "SFT_DEFAULTS",
    "SIZES",
    "build_tiny",
    "build_tokenizer",
    "check_request",
    "completion_nll",
    "evaluate",
    "generate_completions",
    "make_model",
    "num_parameters",
]
