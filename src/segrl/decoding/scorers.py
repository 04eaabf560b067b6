"""Reward sources for decoding-time methods: anything that scores a prompt with a (possibly partial) response.

One interface: a *scorer* is a callable ``scorer(prompts, responses) -> list[float]`` over equal-length lists, where
a prompt is text or a list of chat messages (as in the dataset) and a response is the decoded text generated so far
(special tokens removed). NaN means "could not score"; callers count it (see :func:`safe_scores`).

- :class:`FunctionScorer`: a Python reward function in TRL's signature ``fn(prompts=..., completions=...)``, e.g. a
  built-in task's ``reward`` (``segrl.tasks.sentiment.reward``: VADER's compound score of the response; an empty
  response scores the task's minimum, -1).
- :class:`SequenceClassifierScorer`: a ``transformers`` sequence classifier with one label, the classic reward model,
  reading prompt + response as one sequence (through the chat template when the prompt is a conversation), without
  EOS: a partial response has none, so complete and partial responses are read alike.
- :class:`SegmentRewardScorer`: a segment reward model of :mod:`segrl.segment_rm`; the score is its sequence score
  e(x, y) (the mean of the segment rewards) on the partial response, without EOS. Segments come from the entropies
  of a reference model (the decoded policy when it is the SFT model the reward model was segmented with). An empty
  response has no segment; it scores the head's output at the last prompt token, r(x).

:func:`load_scorer` turns the CLI's ``--reward`` into one of these.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from segrl.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["FunctionScorer", "SegmentRewardScorer", "SequenceClassifierScorer", "load_scorer", "safe_scores"]


class FunctionScorer:
    """A reward function in TRL's signature, ``fn(prompts=list, completions=list) -> list[float | None]``
    (None is read as NaN)."""

    def __init__(self, fn: Callable[..., list], name: str | None = None):
        self.fn, self.name = fn, name or getattr(fn, "__qualname__", repr(fn))

    def __call__(self, prompts: list[Any], responses: list[str]) -> list[float]:
        values = self.fn(prompts=prompts, completions=responses)
        return [math.nan if v is None else float(v) for v in values]


def _token_ids(tokenizer, prompt: Any, response: str) -> list[int]:
    """Prompt + response as one sequence: plain text as the tokenizer encodes it, a conversation through its chat
    template with the response as the assistant's message (tokenized by the template, so BOS appears once)."""
    if isinstance(prompt, str):
        return list(tokenizer(text=prompt + response)["input_ids"])
    messages = prompt + [{"role": "assistant", "content": response}]
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


class SequenceClassifierScorer:
    """``AutoModelForSequenceClassification`` with one label: the logit of prompt + response.

    Args:
        model: the classifier (``num_labels == 1``).
        tokenizer: its tokenizer (with a pad token).
        batch_size: texts per forward pass.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, name: str | None = None):
        if model.config.num_labels != 1:
            raise UserError(f"{name or 'the reward model'}: a reward classifier needs one label, "
                            f"this one has {model.config.num_labels}")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.name = name or model.config.name_or_path

    @torch.no_grad()
    def __call__(self, prompts: list[Any], responses: list[str]) -> list[float]:
        sequences = [_token_ids(self.tokenizer, p, r) for p, r in zip(prompts, responses)]
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(sequences), self.batch_size):
            enc = self.tokenizer.pad({"input_ids": sequences[start : start + self.batch_size]}, return_tensors="pt")
            logits = self.model(**enc.to(device)).logits
            scores.extend(logits[:, 0].float().tolist())
        return scores


class SegmentRewardScorer:
    """The sequence score e(x, y) of a segment reward model on partial responses (see the module docstring).

    Args:
        model: from :func:`segrl.segment_rm.load_reward_model`.
        tokenizer: its tokenizer.
        reference: a causal LM with the same tokenizer whose entropies cut the response into segments (needed by
            the ``"segment"`` variant only).
        batch_size: rows per forward pass.
    """

    def __init__(self, model, tokenizer, reference=None, batch_size: int = 16, name: str | None = None):
        from segrl.segment_rm import segmentation_of

        self.variant, self.threshold = segmentation_of(model)
        if self.variant == "segment" and reference is None:
            raise UserError("a 'segment' reward model needs a reference model for its entropy segmentation")
        self.model, self.tokenizer, self.reference, self.batch_size = model.eval(), tokenizer, reference, batch_size
        self.name = name or model.config.name_or_path

    @torch.no_grad()
    def __call__(self, prompts: list[Any], responses: list[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            scores.extend(self._score(prompts[start : start + self.batch_size], responses[start : start + self.batch_size]))
        return scores

    def _score(self, prompts: list[Any], responses: list[str]) -> list[float]:
        from segrl import segment_rm
        from segrl import segmentation as seg
        from segrl.prepare import tokenize_prompt
        from segrl.scoring import completion_entropies_and_logps

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        prompt_ids = [tokenize_prompt(self.tokenizer, p, "prompt") for p in prompts]
        response_ids = [self.tokenizer(text=r, add_special_tokens=False)["input_ids"] for r in responses]
        width_p, width_r = max(map(len, prompt_ids)), max(map(len, response_ids))
        ids = torch.full((len(prompts), width_p + width_r), pad, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for row, (p, r) in enumerate(zip(prompt_ids, response_ids)):  # TRL's layout: prompt left-, response right-padded
            ids[row, width_p - len(p) : width_p + len(r)] = torch.tensor(p + r, dtype=torch.long)
            mask[row, width_p - len(p) : width_p + len(r)] = True
        ids, mask = ids.to(device), mask.to(device)
        head = self.model(input_ids=ids, attention_mask=mask.long()).logits[..., 0].float()
        bare = head[:, width_p - 1]  # r(x): the head after the last prompt token
        if width_r == 0:
            return bare.tolist()
        completion = mask[:, width_p:]
        if self.variant == "segment":
            entropy, _ = completion_entropies_and_logps(self.reference, ids, mask.long(), width_r)
            body = seg.entropy_segments(entropy.to(device), completion, self.threshold)
        else:
            body = seg.segment_ids_from_starts(torch.zeros_like(completion), completion)
        segment_ids = segment_rm.variant_segment_ids(body, completion, self.variant)
        scores = segment_rm.sequence_scores(head[:, width_p:], segment_ids)
        return torch.where(completion.any(1), scores, bare).tolist()


def safe_scores(scorer, prompts: list[Any], responses: list[str]) -> tuple[list[float], int]:
    """Score a batch, never raising on a scorer failure: ``(scores, failures)``.

    If the batch call raises, each pair is scored alone, so one bad candidate does not sink the others. A pair whose
    scoring raises, or whose score is not a finite number, gets NaN and counts as a failure (logged). A scorer that
    returns the wrong number of scores is a programming error and raises :class:`UserError`.
    """
    if not prompts:
        return [], 0
    try:
        scores = scorer(prompts, responses)
    except Exception as err:  # a user's reward function: isolate the pair that fails
        logger.warning("reward %s failed on a batch of %d (%s); scoring one by one", _name(scorer), len(prompts), err)
        scores = []
        for prompt, response in zip(prompts, responses):
            try:
                scores.extend(scorer([prompt], [response]))
            except Exception as one_err:
                logger.warning("reward %s failed on one response (%s); it scores NaN", _name(scorer), one_err)
                scores.append(math.nan)
    if len(scores) != len(prompts):
        raise UserError(f"reward {_name(scorer)} returned {len(scores)} scores for {len(prompts)} responses")
    clean = []
    for value in scores:
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        clean.append(value if math.isfinite(value) else math.nan)
    failures = sum(math.isnan(v) for v in clean)
    if failures:
        logger.warning("reward %s gave no finite score for %d of %d responses", _name(scorer), failures, len(clean))
    return clean, failures


def _name(scorer) -> str:
    return getattr(scorer, "name", type(scorer).__name__)


def load_scorer(spec: str, policy=None, policy_tokenizer=None, device=None, batch_size: int = 16):
    """A scorer from the CLI's ``--reward``.

    ``spec`` is a built-in task name (its ``reward`` function, e.g. ``sentiment``), ``package.module:function`` (a
    reward function in TRL's signature, imported by that explicit path), or a model directory or hub id in the local
    cache: a segrl segment reward model (its config has ``segrl_segmentation``; the ``"segment"`` variant uses
    ``policy`` as the reference of its segmentation, so the two must share a tokenizer) or a sequence classifier
    with one label.
    """
    from segrl.tasks import task_names

    if spec in task_names():
        from segrl.tasks import get_task

        return FunctionScorer(get_task(spec).reward, name=spec)
    if ":" in spec and not Path(spec).exists():
        from segrl.user_data import import_function

        return FunctionScorer(import_function(spec, "--reward"), name=spec)
    return _load_model_scorer(spec, policy, policy_tokenizer, device, batch_size)


def _load_model_scorer(path: str, policy, policy_tokenizer, device, batch_size: int):
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from segrl.tasks import task_names

    try:  # never the model's own code: a directory whose config names custom classes is refused here
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(
            f"--reward {path}: not a task name ({', '.join(task_names())}), a module:function path, or a model "
            f"directory or cached hub id ({str(err).strip().splitlines()[0]})"
        ) from err
    if isinstance(getattr(config, "segrl_segmentation", None), dict):
        from segrl.segment_rm import load_reward_model, segmentation_of

        try:
            model = load_reward_model(path, device=device)
        except SafetensorError as err:
            raise UserError(f"--reward {path}: damaged weights ({err})") from err
        reference = None
        if segmentation_of(model)[0] == "segment":
            if policy is None or policy_tokenizer is None or policy_tokenizer.get_vocab() != tokenizer.get_vocab():
                raise UserError(f"--reward {path}: a 'segment' reward model segments with the decoded policy's "
                                "entropies, so the policy must share its tokenizer")
            reference = policy
        return SegmentRewardScorer(model, tokenizer, reference, batch_size, name=path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError, SafetensorError) as err:
        raise UserError(f"--reward {path}: cannot load a sequence classifier ({str(err).strip().splitlines()[0]})") from err
    if device is not None:
        model = model.to(device)
    return SequenceClassifierScorer(model, tokenizer, batch_size, name=path)
