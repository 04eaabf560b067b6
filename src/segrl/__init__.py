"""segrl: segment-level credit assignment for language-model alignment.

Pure tensor functions: :mod:`segrl.segmentation` (segmenters and per-segment helpers), :mod:`segrl.advantages`
(SPO's chain and tree advantages, GAE, return-to-go, group baselines), :mod:`segrl.normalizers`,
:mod:`segrl.shaping` (densification, KL-shaped rewards), :mod:`segrl.losses`, :mod:`segrl.segment_rm` (reading
segment rewards). Trainers (thin TRL subclasses) in :mod:`segrl.trainers`; models and built-in tasks in
:mod:`segrl.models` and :mod:`segrl.tasks`; decoding-time alignment (CARDS, Best-of-N) in :mod:`segrl.decoding`;
the command line in :mod:`segrl.cli`.
"""

__version__ = "0.1.0"
