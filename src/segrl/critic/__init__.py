"""DRLC's critic side (Cao et al. 2024): prompts (:mod:`.templates`), answer parsing (:mod:`.answers`), spans to
per-token rewards by character offsets (:mod:`.align`) and the critics themselves (:mod:`.critics`). The trainer is
:mod:`segrl.trainers.drlc`; the dense reward source that joins them is :class:`segrl.dense_rewards.CriticSpanSource`.
"""
