"""Run an RL method on a built-in task or on the user's prompts and rewards: the library behind ``segrl train``.

:func:`train` builds the pieces (model preset; the task's train and held-out splits and its reward, or the user's
files and reward functions, :mod:`segrl.user_data`), runs TRL's ``GRPOTrainer`` (the baseline), segrl's
``SPOTrainer``, its ``DenseRewardTrainer`` (dense rewards from a segment reward model, PPO with a value model or
critic-free) or its ``DRLCTrainer`` (dense rewards from a critic's spans), and writes into ``output_dir``:

- ``config.json``: the resolved run and trainer configuration, the SHA-256 of the user's data files, package
  versions and the git commit;
- ``metrics.jsonl``: one JSON object per logging step (TRL's metrics, ``segments/*``, ``eval/*``), appended and
  flushed line by line so that a crash loses nothing already logged;
- ``checkpoint-<step>/`` every ``save_steps`` steps, marked complete once written; ``--resume`` continues from the
  newest complete one (:mod:`segrl.checkpoints`);
- ``final/``: the trained model and tokenizer (safetensors); ``value_model/``: the dense trainer's value model (PPO's
  critic), if any;
- ``report.html``: plots of every logged metric and the example completion, written last by
  :func:`segrl.report.write_run_report` (a report that fails is a warning; the run stays complete).

Held-out accuracy is measured every ``eval_every`` steps (and at the start and the end) by sampling one completion
per held-out prompt at the training temperature, plus greedy decoding (``eval/accuracy``, ``eval/accuracy_greedy``,
and the task's own held-out metrics where it has them, e.g. ``eval/box_iou`` for ``grounding``). The task's
training rewards are its ``reward_funcs`` where it has several (``grounding``: format, box IoU², mask IoU², summed
by TRL and logged one by one as ``rewards/<name>/mean``), else its ``reward``. With ``--reward_funcs`` the
held-out score is the weighted sum of the user's functions (``eval/reward``, ``eval/reward_greedy``); with
``--train_file`` and no ``--eval_file`` there is no held-out evaluation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from transformers import PrinterCallback, TrainerCallback

from segrl.checkpoints import RESUME_HELP, start_run
from segrl.errors import UserError
from segrl.files import replace_dir, write_text_atomic
from segrl.user_data import RewardEvaluation, file_digest, load_prompts, load_reward_functions

METHODS = ("grpo", "spo", "dense", "drlc")


@dataclass
class RunArguments:
    """What to train on; the trainer's own fields live in ``GRPOConfig`` / ``SPOConfig``."""

    task: str = field(default="arith", metadata={"help": "Built-in task (see segrl.tasks): its prompts, reward and "
                                                         "default model, where no --train_file / --reward_funcs."})
    train_file: str | None = field(
        default=None,
        metadata={"help": "Your prompts instead of the task's: a JSONL file (a 'prompt' per line, text or chat "
                          "messages, plus the columns your reward functions read) or what datasets.load_dataset "
                          "opens (split 'train'); every row is used (--train_examples applies to task data)."},
    )
    eval_file: str | None = field(
        default=None,
        metadata={"help": "Held-out prompts, as --train_file (split 'test'). With --train_file and no --eval_file "
                          "there is no held-out evaluation."},
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions instead of the task's, as module:function or module.function "
                          "(my_rewards:exact_match; the module importable from the working directory or the "
                          "installed packages), in TRL's signature; --reward_weights weighs them. Held-out "
                          "evaluation then logs their weighted sum as eval/reward."},
    )
    model: str | None = field(
        default=None,
        metadata={"help": "Policy: a preset (tiny-<task>, smollm2-135m), a local directory or a hub id "
                          "[default: tiny-<task>]."},
    )
    train_examples: int = field(default=2048, metadata={"help": "Prompts in the training split."})
    eval_examples: int = field(default=200, metadata={"help": "Held-out prompts for accuracy along the way."})
    eval_every: int = field(default=10, metadata={"help": "Evaluate held-out accuracy every this many steps."})
    max_generated_tokens: int | None = field(
        default=None,
        metadata={"help": "Stop once this many tokens were generated (policy + MC rollouts): equal-cost comparisons."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Preset cache [default: $SEGRL_CACHE]."})
    resume: bool = field(default=False, metadata={"help": RESUME_HELP})
    use_peft: bool = field(
        default=False,
        metadata={"help": "Train a LoRA adapter (peft) instead of every weight; the reference (KL, SPO's and the "
                          "dense trainer's) is the model with the adapter off; final/ holds the merged model (the "
                          "adapter alone under DeepSpeed or FSDP)."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (TRL's default)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (TRL's default)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (TRL's default)."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules to adapt [default: peft's choice for the architecture]."})


class RunLogger(TrainerCallback):
    """Write the run's ``metrics.jsonl``: every trainer log, plus a held-out evaluation at the start, right after
    the log of every ``eval_every``-th step, and at the end. Each record carries ``step`` and
    ``wall_seconds`` (training time since the start, evaluation excluded) and is flushed as it is written. With
    ``max_generated_tokens``, training stops after the first logged step that reaches it.
    Evaluation records repeat the latest ``tokens/generated``, so that accuracy can be plotted against cost; they
    also go into ``state.log_history``. ``task`` scores the held-out completions (a task module, whose mean reward
    is logged as ``eval/accuracy``, or a :class:`segrl.user_data.RewardEvaluation`, ``eval/reward``); with
    ``eval_set`` None there is no held-out evaluation."""

    def __init__(self, path: Path, task, eval_set, eval_every: int, temperature: float, max_new_tokens: int,
                 max_generated_tokens: int | None = None):
        self.path, self.task, self.eval_set, self.eval_every = path, task, eval_set, eval_every
        self.score = getattr(task, "score_name", "accuracy")
        self.max_generated_tokens = max_generated_tokens
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.start = time.perf_counter()
        self.generated_tokens = 0
        self.last_eval_step = None

    def _write(self, state, record: dict) -> dict:
        record = {"step": state.global_step, "wall_seconds": round(time.perf_counter() - self.start, 3), **record}
        if state.is_world_process_zero:  # several processes: all log and evaluate alike, only the main one writes
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        return record

    def _evaluate(self, state, model, tokenizer):
        from segrl.tiny import evaluate_metrics

        if self.eval_set is None:
            return
        eval_start = time.perf_counter()
        model.eval()
        sampled = evaluate_metrics(model, tokenizer, self.task, self.eval_set, greedy=False,
                                   temperature=self.temperature, max_new_tokens=self.max_new_tokens)
        greedy = evaluate_metrics(model, tokenizer, self.task, self.eval_set, greedy=True,
                                  max_new_tokens=self.max_new_tokens)
        scores = {f"eval/{name}": value for name, value in sampled.items()}
        scores.update({f"eval/{name}_greedy": value for name, value in greedy.items()})
        scores["tokens/generated"] = self.generated_tokens
        model.train()
        self.start += time.perf_counter() - eval_start
        self.last_eval_step = state.global_step
        budget = f"/{self.max_generated_tokens:,}" if self.max_generated_tokens else ""
        score = self.score
        task_metrics = "".join(f"  {name} {value:.3f}" for name, value in sampled.items() if name != score)
        if state.is_world_process_zero:
            print(f"step {state.global_step:>4}  generated {self.generated_tokens:,}{budget} tokens  "
                  f"held-out {score} {scores[f'eval/{score}']:.3f} (greedy {scores[f'eval/{score}_greedy']:.3f})"
                  f"{task_metrics}  train {time.perf_counter() - self.start:.0f}s, "
                  f"eval {time.perf_counter() - eval_start:.0f}s{self._left(state)}", flush=True)
        state.log_history.append(self._write(state, scores))

    def _left(self, state) -> str:
        """The training time left (evaluations excluded), from the share done of ``max_steps`` or of the token
        budget, whichever is further."""
        done = state.global_step / state.max_steps if state.max_steps > 0 else 0.0
        if self.max_generated_tokens:
            done = max(done, self.generated_tokens / self.max_generated_tokens)
        if not 0 < done < 1:
            return ""
        seconds = round((time.perf_counter() - self.start) * (1 - done) / done)
        minutes, seconds = divmod(seconds, 60)
        hours, minutes = divmod(minutes, 60)
        left = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
        return f", about {left} of training left"

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.start = time.perf_counter()
        if state.global_step > 0:  # resumed: the file holds the run up to the checkpoint, evaluations included
            records = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines()]
            self.start -= records[-1]["wall_seconds"]
            self.generated_tokens = int(records[-1].get("tokens/generated", 0))
            self.last_eval_step = max((r["step"] for r in records if f"eval/{self.score}" in r), default=None)
            return
        self._evaluate(state, model, processing_class)

    def on_log(self, args, state, control, logs=None, model=None, processing_class=None, **kwargs):
        logs = logs or {}
        self.generated_tokens = int(logs.get("tokens/generated", self.generated_tokens))
        self._write(state, logs)
        is_step_log = "loss" in logs
        if self.max_generated_tokens is not None and self.generated_tokens >= self.max_generated_tokens:
            control.should_training_stop = True
            # No checkpoint at the last step (final/ holds it): resumed from one, transformers would train a step
            # more before it checks the stop; resumed from the one before, the run ends here again.
            control.should_save = False
        if is_step_log and (state.global_step % self.eval_every == 0 or state.global_step == state.max_steps):
            self._evaluate(state, model, processing_class)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.last_eval_step != state.global_step:  # not evaluated right after the last step's log
            self._evaluate(state, model, processing_class)


def run_record() -> dict:
    """Package versions and git commit, for reproducibility."""
    versions = {name: metadata.version(name) for name in ("segrl", "torch", "transformers", "trl", "accelerate",
                                                           "peft", "datasets", "tokenizers")}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"versions": versions, "git_commit": commit}


def _datasets(run: RunArguments, task, seed: int):
    """The training prompts and the held-out ones (None: no held-out evaluation): the user's files where given,
    else the task's generated splits."""
    if run.train_file:
        train_set = load_prompts(run.train_file, "train", "--train_file")
    else:
        train_set = task.make_dataset("train", run.train_examples, seed=seed)
    if run.eval_file:
        eval_set = load_prompts(run.eval_file, "test", "--eval_file")
    else:
        eval_set = None if run.train_file else task.make_dataset("test", run.eval_examples, seed=seed)
    return train_set, eval_set


def train(method: str, run: RunArguments, config) -> Path:
    """Train with ``method`` ("grpo", "spo", "dense" or "drlc") on ``run.task``; ``config`` is a ``GRPOConfig``,
    ``SPOConfig``, ``DenseRewardConfig`` or ``DRLCConfig``.

    Returns the output directory.
    """
    from segrl.models import load_model
    from segrl.report import write_run_report  # matplotlib: imported only by a run that needs it
    from segrl.reward_training import save_final
    from segrl.tasks import get_task
    from segrl.trainers.grpo import TokenCountingGRPOTrainer
    from segrl.trainers.dense import DenseRewardConfig, DenseRewardTrainer
    from segrl.trainers.drlc import DRLCConfig, DRLCTrainer
    from segrl.trainers.spo import SPOConfig, SPOTrainer

    if method not in METHODS:
        raise UserError(f"Unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "spo" and not isinstance(config, SPOConfig):
        raise UserError("segrl train spo needs an SPOConfig")
    if method == "dense" and not isinstance(config, DenseRewardConfig):
        raise UserError("segrl train dense needs a DenseRewardConfig")
    if method == "drlc" and not isinstance(config, DRLCConfig):
        raise UserError("segrl train drlc needs a DRLCConfig")
    if run.eval_every < 1:
        raise UserError(f"--eval_every must be >= 1, got {run.eval_every}")
    if run.eval_every % config.logging_steps != 0:
        raise UserError(
            f"--eval_every ({run.eval_every}) must be a multiple of --logging_steps ({config.logging_steps}): "
            "held-out accuracy is measured right after a step's log"
        )
    task = get_task(run.task)
    if run.train_file and not run.model:
        raise UserError("--train_file needs --model: the default tiny-<task> presets know only their task's text")
    if method == "drlc" and config.critic == "lexicon" and run.task != "sentiment" and not run.train_file:
        raise UserError(f"the lexicon critic marks sentiment words, which {run.task} completions do not have: use "
                        "--task sentiment (e.g. with --model smollm2-135m), or --critic self / a critic model")
    if run.reward_funcs:
        reward_funcs = load_reward_functions(run.reward_funcs)
        evaluation = RewardEvaluation(reward_funcs, config.reward_weights)
    else:
        reward_funcs, evaluation = list(getattr(task, "reward_funcs", [task.reward])), task
    if config.reward_weights is not None and len(config.reward_weights) != len(reward_funcs):
        raise UserError(f"--reward_weights has {len(config.reward_weights)} weights for {len(reward_funcs)} reward "
                        "function(s)")
    if method == "dense" and config.reward_model and config.reward_weights is None:
        config.reward_weights = [0.0] * len(reward_funcs)  # the segment RM is the reward; the task's is only logged
    train_set, eval_set = _datasets(run, task, config.seed)
    device = "cpu" if config.use_cpu else None
    run.model = run.model or f"tiny-{run.task}"
    model, tokenizer = load_model(run.model, cache_dir=run.cache_dir, seed=config.seed, device=device)
    tokenizer.padding_side = "left"

    out = Path(config.output_dir)
    logger = RunLogger(out / "metrics.jsonl", evaluation, eval_set, run.eval_every, config.temperature,
                       config.max_completion_length, run.max_generated_tokens)
    extra = {}
    if method == "dense" and config.reward_model:
        from segrl.dense_rewards import load_segment_reward_source

        extra["dense_rewards"] = load_segment_reward_source(
            config.reward_model, tokenizer, config.normalizer, config.interpolation, device=model.device,
            batch_size=config.per_device_train_batch_size,
        )
    if run.use_peft:
        from peft import LoraConfig

        extra["peft_config"] = LoraConfig(task_type="CAUSAL_LM", r=run.lora_r, lora_alpha=run.lora_alpha,
                                          lora_dropout=run.lora_dropout, target_modules=run.lora_target_modules,
                                          bias="none")
    trainer_class = {"grpo": TokenCountingGRPOTrainer, "spo": SPOTrainer, "dense": DenseRewardTrainer,
                     "drlc": DRLCTrainer}[method]
    trainer = trainer_class(
        model=model, reward_funcs=reward_funcs, args=config, train_dataset=train_set, processing_class=tokenizer,
        callbacks=[logger], **extra,
    )
    trainer.remove_callback(PrinterCallback)  # raw metric dicts on stdout: they are in metrics.jsonl already

    # Every input (model, reward model, normaliser, critic) loaded: only now is the output directory touched.
    main_process = config.process_index == 0  # under `accelerate launch` only the main process writes files
    inputs = {name: {"path": path, "sha256": file_digest(path)} for name, path in
              (("train_file", run.train_file), ("eval_file", run.eval_file)) if path}
    resolved = {"method": method, "run": asdict(run), "trainer": config.to_dict(), "inputs": inputs, **run_record()}
    checkpoint = start_run(out, run.resume, resolved, main_process)
    trainer.train(resume_from_checkpoint=checkpoint)
    if run.use_peft and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        # final/ holds a plain model that every segrl command loads (sharded runs save TRL's adapter files).
        trainer.model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    save_final(trainer, out)  # complete or not at all; every process calls it (ZeRO-3/FSDP gather)
    if isinstance(trainer, DenseRewardTrainer) and trainer.value_model is not None:
        partial = out / "value_model.partial"
        if main_process:
            shutil.rmtree(partial, ignore_errors=True)  # left by a run that crashed while saving
        trainer.save_value_model(partial)
        if main_process:
            replace_dir(partial, out / "value_model")
    if main_process and getattr(trainer, "last_example", None) is not None:
        write_text_atomic(out / "example.json", json.dumps(trainer.last_example) + "\n")
    write_run_report(out, main_process)  # last: a report that fails is a warning, the run stays complete
    return out
