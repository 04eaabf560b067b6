"""``segrl`` with arith's reward replaced by one that a random model's text does not always score 0: a function of
the completion's characters. Without such a signal there is no advantage and no gradient, and comparing two runs'
parameters would prove nothing.

Run as a script, alone or under ``accelerate launch``: ``python tests/signal_cli.py train spo --model DIR ...``
(tests/test_resume.py, tests/test_multiprocess.py).
"""

import sys


def char_reward(prompts, completions, **columns):
    return [(sum(map(ord, str(c))) % 7) / 6 for c in completions]


if __name__ == "__main__":
    import segrl.tasks.arith as arith
    from segrl.cli import app

    arith.reward = char_reward
    app(sys.argv[1:], prog_name="segrl")
