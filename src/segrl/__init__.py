"""segrl: segment-level credit assignment for language-model alignment.

Pure tensor functions live in :mod:`segrl.segmentation` (and, later, advantages, normalisers, losses);
models and built-in tasks in :mod:`segrl.models` and :mod:`segrl.tasks`; the command line in :mod:`segrl.cli`.
"""

__version__ = "0.1.0"
