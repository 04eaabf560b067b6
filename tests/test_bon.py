"""Vanilla and Best-of-N (segrl.decoding.sampling), the decoding job (segrl.decoding.run) and `segrl decode`."""

import json
import math

import pytest
import torch
from scripted import EOS, CharTokenizer, ScriptedLM, char_id, peaked

from segrl.decoding.run import estimate_target_reward, run, summarize
from segrl.decoding.sampling import SamplingConfig, best_of_n
from segrl.errors import UserError


pytestmark = pytest.mark.usefixtures("one_thread")


def letters_rule(visible):
    """Uniform over 'a'..'e' for 6 response tokens after a 2-character prompt, then EOS."""
    if len(visible) >= 8:
        return peaked(EOS)
    logits = torch.full((len(CharTokenizer().get_vocab()),), -1e9)
    logits[[char_id(c) for c in "abcde"]] = 0.0
    return logits


def count_a(prompts, completions, **_):
    return [c.count("a") - 0.01 * c.count("e") for c in completions]


def decode_all(n, select=True, prompts=("hi", "yo", "ok"), batch_size=16, seed=0, scorer=count_a):
    from segrl.decoding.scorers import FunctionScorer

    config = SamplingConfig(n=n, top_k=5, temperature=1.0, max_new_tokens=32, batch_size=batch_size, seed=seed)
    return list(best_of_n(ScriptedLM(letters_rule), CharTokenizer(), FunctionScorer(scorer), list(prompts), config,
                          select=select))


def test_best_of_n_picks_the_best_of_the_samples_that_smaller_n_also_drew():
    vanilla = decode_all(1, select=False)
    bon4, bon16 = decode_all(4), decode_all(16)
    for v, b4, b16 in zip(vanilla, bon4, bon16):
        assert len(v.text) == 6 and v.tokens == 7 and v.finish == "eos"  # 6 letters and EOS
        assert v.rm_calls == 0 and b4.rm_calls == 4 and b16.rm_calls == 16
        assert b4.policy_tokens == 4 * 7 and b16.policy_tokens == 16 * 7
        assert b16.reward >= b4.reward >= v.reward  # BoN-4's samples are the first 4 of BoN-16's, vanilla's the first
        assert b4.reward == pytest.approx(count_a([], [b4.text])[0])
        assert b4.rm_tokens == 4 * (2 + 7)
    # with 16 uniform samples over 5 letters, some prompt's best has more 'a's than its vanilla sample
    assert sum(b.reward for b in bon16) > sum(v.reward for v in vanilla)


def test_samples_do_not_depend_on_the_batch():
    assert [r.text for r in decode_all(4, batch_size=16)] == [r.text for r in decode_all(4, batch_size=4)]
    assert [r.text for r in decode_all(4, seed=0)] != [r.text for r in decode_all(4, seed=1)]


def test_failed_scores_never_win():
    def picky(prompts, completions, **_):
        return [math.nan if "a" in c else 1.0 for c in completions]

    results = decode_all(16, scorer=picky)
    assert all(r.reward_errors > 0 for r in results)  # P(no 'a' in 16 samples of 6 of 5 letters) ~ 1e-6
    for r in results:
        if r.reward is not None:
            assert "a" not in r.text and r.reward == 1.0
        else:  # every sample failed: the first is returned, unscored
            assert r.reward_errors == 16


def test_vanilla_must_draw_one_sample():
    with pytest.raises(UserError, match="one sample"):
        decode_all(4, select=False)


def test_run_writes_rows_in_input_order_and_a_summary(tmp_path):
    from segrl.decoding.cards import CardsConfig
    from segrl.decoding.scorers import FunctionScorer

    prompts = ["hi", "", "yo", "ok"]
    config = CardsConfig(target_reward=1.0, top_k=5, max_new_tokens=16, batch_size=2)
    out = tmp_path / "decode.jsonl"
    seen = []
    summary = run("cards", ScriptedLM(letters_rule), CharTokenizer(), FunctionScorer(count_a), prompts, config, out,
                  extra={"note": "test"}, progress=lambda r, done, total: seen.append((done, total)))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert rows[1]["error"] == "the prompt is empty" and rows[1]["text"] is None
    assert seen[-1] == (4, 4)
    assert not (tmp_path / "decode.jsonl.partial").exists()
    saved = json.loads((tmp_path / "decode.summary.json").read_text())
    assert saved["note"] == "test" and saved["skipped"] == 1 and saved["prompts"] == 4
    assert saved["versions"]["trl"] and saved["versions"]["segrl"] and "git_commit" in saved  # reproducibility
    decoded = [r for r in rows if r["error"] is None]
    assert saved["mean_reward"] == pytest.approx(sum(r["reward"] for r in decoded) / 3)
    assert saved["rm_calls"] == sum(r["rm_calls"] for r in decoded)
    assert summary["policy_tokens"] == sum(r["policy_tokens"] for r in decoded) > 0


def test_summarize_counts_skips_and_unscored():
    from segrl.decoding.base import Decoded

    results = [Decoded(0, "a", "x", 1.0, tokens=3, finish="eos"), Decoded(1, "b", "y", None, tokens=5, finish="length"),
               Decoded(2, "", None, None, error="the prompt is empty")]
    summary = summarize(results, wall_time=2.0)
    assert summary["skipped"] == 1 and summary["scored"] == 1 and summary["mean_reward"] == 1.0
    assert summary["tokens"] == 8 and summary["eos_share"] == 0.5 and summary["prompts_per_second"] == 1.0


def test_target_reward_estimate_is_mean_plus_half_std():
    from statistics import fmean, stdev

    from segrl.decoding.scorers import FunctionScorer

    config = SamplingConfig(top_k=5, temperature=1.0, max_new_tokens=32)
    prompts = ["hi", "yo", "ok", "no", "ab"]
    target, seen = estimate_target_reward(ScriptedLM(letters_rule), CharTokenizer(), FunctionScorer(count_a), prompts,
                                          config, num_prompts=4)
    samples = decode_all(1, select=False, prompts=prompts[:4], seed=1)
    rewards = [count_a([], [r.text])[0] for r in samples]
    assert seen["calibration_prompts"] == 4
    assert target == pytest.approx(fmean(rewards) + 0.5 * stdev(rewards))


def test_decode_cli_on_a_prompt_file(tmp_path, random_model_dir):
    from typer.testing import CliRunner

    from segrl.cli import app

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The soup"}\n{"prompt": ""}\n{"prompt": "We sat by"}\n')
    out = tmp_path / "out.jsonl"
    common = ["decode", "--model", str(random_model_dir), "--prompts", str(prompts), "--reward", "sentiment",
              "--max-new-tokens", "8", "-o", str(out)]
    result = CliRunner().invoke(app, common + ["--method", "cards", "--target-reward", "0.0"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[1]["error"] == "the prompt is empty"
    assert all(0 < r["tokens"] <= 8 and r["rm_calls"] >= 2 for r in (rows[0], rows[2]))
    result = CliRunner().invoke(app, common + ["--method", "bon", "--n", "2"])
    assert result.exit_code == 0, result.output
    assert all(r["rm_calls"] == 2 for r in map(json.loads, out.read_text().splitlines()) if r["error"] is None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": 3}\n')
    result = CliRunner().invoke(app, ["decode", "--model", str(random_model_dir), "--prompts", str(bad)])
    assert result.exit_code == 2 and "row 1" in result.output
