"""Decoding-time alignment: steer sampling with a reward source, no training.

- :mod:`segrl.decoding.cards`: CARDS (cascade reward sampling), segment-level rejection sampling.
- :mod:`segrl.decoding.sampling`: its baselines, vanilla sampling and Best-of-N.
- :mod:`segrl.decoding.scorers`: reward sources (a Python reward function, a sequence classifier, a segment reward
  model) behind one interface, ``scorer(prompts, responses) -> list[float]``.
- :mod:`segrl.decoding.batch`: the batched sampler's KV cache, which keeps accepted prefixes and drops rejected
  candidates per row.
- :mod:`segrl.decoding.run`: a decoding job over many prompts (``segrl decode``), streamed to JSONL with totals.
"""
