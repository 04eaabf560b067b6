"""DRLC: RL with dense span rewards from an LLM critic: ``DRLCConfig`` / ``DRLCTrainer``, thin subclasses of the
dense-reward pair (:mod:`segrl.trainers.dense`).

Cao et al. 2024, "Enhancing Reinforcement Learning with Dense Rewards from Language Model Critic" (arXiv
2401.07382, EMNLP 2024). For each sampled completion y of prompt x:

1. the holistic reward R(x, y): TRL's reward functions, weighted (``reward_weights``; for the ``sentiment`` task,
   VADER's compound score of the continuation);
2. a critic, prompted few-shot (:mod:`segrl.critic.templates`), names the shortest spans of y behind the judgement;
   its answer is parsed (:mod:`segrl.critic.answers`) and each span is found in y by characters
   (:mod:`segrl.critic.align`): r^critic_t = +0.5 inside positive spans, -0.5 inside negative (toxic, flawed)
   spans, and the template's ``outside`` reward elsewhere (0; summarisation +0.5);
3. the per-token reward r_t = -β·KL_t + r^critic_t + [t = last]·R (clipped to ±``reward_clip``), and the policy is
   trained on it by the dense-reward trainer: PPO with a value model and GAE (the paper) or critic-free.

Critics (``critic``): ``lexicon`` (VADER word valences as one-word spans, no model: for CPU runs and tests),
``self`` (self-critique: the policy being trained answers the critic prompt, as it is at each step), or any
``transformers`` causal LM (a preset such as ``smollm2-135m``, a directory or a hub id), frozen.

Defaults: span rewards ±0.5 and the answer format of the templates; greedy critic answers of at most 64 tokens
(``critic_max_new_tokens``; the paper's sentiment critic answered in 60). Everything else is the dense trainer's
(β = 0.01 k1 KL in the reward, GAE γ = 1, λ = 0.95).

Deviations from the paper, and why:
- Spans are mapped to tokens by character offsets of the sampled tokens, every occurrence of a span, whole words
  only; the released code marked every token whose decoded string occurs in a span's text (every "the").
- The critic sees only the completion (for ``sentiment``, the continuation that VADER scores), not the prompt; the
  released code also gave rewards to the prompt's tokens, which the policy does not choose.
- A critic answer that does not parse gives zero critic reward (counted in ``critic/unparsed``); the released code
  read the whole answer as positive spans when the negative header was missing.
- The templates and their few-shot examples are written for this project; the answer format is a header per span
  kind and one span per line (the paper: "[Span 1]: ..." lines, which the parser also accepts).
- Self-critique here is the *current* policy; answers are not cached across steps (the critic changes).

Numerical guards: the dense trainer's (:mod:`segrl.trainers.dense`, docs/NUMERICAL_GUARDS.md); span rewards are
constants of the template, finite by construction, and a holistic reward function's NaN/±inf number stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from segrl.critic.critics import ChatCritic, LexiconCritic
from segrl.critic.templates import load_template
from segrl.decoding.base import check_positive_ints
from segrl.dense_rewards import CriticSpanSource
from segrl.errors import UserError
from segrl.trainers.dense import DenseRewardConfig, DenseRewardTrainer


@dataclass
class DRLCConfig(DenseRewardConfig):
    """``DenseRewardConfig`` plus the critic's fields (DRLC's critic; PPO's critic is the ``value_*`` fields)."""

    critic: str = field(
        default="lexicon",
        metadata={"help": "Span critic: 'lexicon' (VADER words), 'self' (the policy critiques itself) or a causal LM "
                          "(a preset such as smollm2-135m, a directory or a hub id)."},
    )
    critic_template: str = field(
        default="sentiment",
        metadata={"help": "Critic prompt: sentiment, toxicity, summarization, or a JSON file of the same fields "
                          "(segrl.critic.templates); not used by the lexicon critic."},
    )
    critic_max_new_tokens: int = field(default=64, metadata={"help": "Longest critic answer (tokens, greedy)."})
    critic_batch_size: int = field(default=8, metadata={"help": "Critic prompts per generate call."})

    def __post_init__(self):
        if self.reward_model is not None:
            raise UserError("DRLCConfig: the dense rewards come from the critic; --reward_model is for `train dense`")
        if self.critic == "lexicon" and self.critic_template != "sentiment":
            raise UserError("DRLCConfig: the lexicon critic marks VADER's sentiment words; --critic_template applies "
                            "to model critics (self or a model)")
        check_positive_ints(self, ("critic_max_new_tokens", "critic_batch_size"))
        load_template(self.critic_template)  # a bad template fails here, before any model is loaded
        super().__post_init__()


class DRLCTrainer(DenseRewardTrainer):
    """The dense-reward trainer with a DRLC critic as its dense source (module docstring).

    Args (besides ``DenseRewardTrainer``'s, whose ``dense_rewards`` this sets):
        critic: a critic ``critic(prompts, responses, scores) -> list[Critique]`` (default: built from
            ``args.critic``).
    """

    def __init__(self, model, reward_funcs, args: DRLCConfig, *rest, critic=None, **kwargs):
        super().__init__(model, reward_funcs, args, *rest, **kwargs)
        self.dense_rewards = CriticSpanSource(critic or self._build_critic(), self.processing_class)

    def _build_critic(self):
        args = self.args
        if args.critic == "lexicon":
            return LexiconCritic()
        template = load_template(args.critic_template)
        options = dict(max_new_tokens=args.critic_max_new_tokens, batch_size=args.critic_batch_size)
        if args.critic == "self":
            policy = self.accelerator.unwrap_model(self.model)
            return ChatCritic(policy, self.processing_class, template, cache_size=0, **options)
        from segrl.models import load_model

        model, tokenizer = load_model(args.critic, device=str(self.accelerator.device))
        return ChatCritic(model.requires_grad_(False), tokenizer, template, **options)
