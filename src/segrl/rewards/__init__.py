"""Reward functions in TRL's signature that are not tied to one built-in task.

- :mod:`segrl.rewards.lens`: LENS-style multi-level grounding rewards (format, box IoU², mask IoU²).
"""
