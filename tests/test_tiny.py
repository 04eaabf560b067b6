"""The tiny-<task> preset builder: a loadable HF directory, an exact tokenizer, and an SFT that actually learns."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from segrl import tiny
from segrl.errors import UserError
from segrl.tasks import arith

STEPS = 40


@pytest.fixture(scope="module")
def built(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("tiny-arith-test")
    lines = []
    report = tiny.build_tiny(
        "arith", out, size="test", seed=0, steps=STEPS, batch_size=16, eval_examples=24, log_every=20,
        log=lines.append,
    )
    return out, report, lines


@pytest.fixture(scope="module")
def loaded(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = built
    return AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)


def test_directory_contents_and_report(built):
    out, report, lines = built
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "preset.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)  # safetensors only
    assert "runs" not in names and not any(n.startswith("checkpoint") for n in names)
    on_disk = json.loads((out / "preset.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    for key in ("task", "size", "seed", "num_parameters", "sft_steps", "wall_seconds", "greedy_accuracy",
                "sampled_accuracy", "completion_nll", "init_completion_nll"):
        assert key in report, key
    assert (report["task"], report["size"], report["seed"], report["sft_steps"]) == ("arith", "test", 0, STEPS)
    assert 0.0 <= report["greedy_accuracy"] <= 1.0 and 0.0 <= report["sampled_accuracy"] <= 1.0
    assert report["wall_seconds"] > 0
    # one progress line per log_every steps, with an ETA, plus the header and the evaluation line
    assert sum("ETA" in line for line in lines) == STEPS // 20


def test_reload_offline_with_auto_classes(built, loaded):
    model, tok = loaded
    _, report, _ = built
    assert model.config.model_type == "llama"
    assert tiny.num_parameters(model) == report["num_parameters"]
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert tok.eos_token == "</s>" and tok.pad_token == "<pad>" and tok.bos_token == "<s>"
    assert tok.eos_token_id != tok.pad_token_id
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_tokenizer_round_trips_and_splits_digits(loaded):
    _, tok = loaded
    for row in arith.make_rows("test", 20, seed=5):
        text = row["prompt"] + row["completion"]
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
        for piece in tok.convert_ids_to_tokens(ids):
            if any(ch.isdigit() for ch in piece):
                assert len(piece) == 1, piece  # every digit is its own token
    odd = "Ünïcode ✓  two  spaces\tand\ttabs 3.14159 -7\n\n"
    assert tok.decode(tok(odd)["input_ids"], skip_special_tokens=True) == odd
    # the prompt's tokens are a prefix of prompt+completion's, so TRL's completion mask is exact
    row = arith.make_rows("train", 1)[0]
    p = tok(row["prompt"])["input_ids"]
    assert tok(row["prompt"] + row["completion"] + tok.eos_token)["input_ids"][: len(p)] == p


def test_sft_lowers_the_demonstration_nll_versus_the_untrained_init(built, loaded):
    model, tok = loaded
    _, report, _ = built
    held_out = arith.make_dataset("test", 48, seed=1)
    fresh = tiny.make_model("test", tok, seed=0)
    nll_init = tiny.completion_nll(fresh, tok, held_out)
    nll_trained = tiny.completion_nll(model, tok, held_out)
    # a uniform guess over ~400 tokens is ~6 nats; 40 small steps reliably get below 3.5
    assert nll_init > 5.0
    assert nll_trained < nll_init - 1.5
    assert report["completion_nll"] < report["init_completion_nll"] - 1.5


def test_sft_trains_the_eos_after_the_answer_line(loaded):
    # TRL appends EOS to each completion and trains on it: after 40 steps the EOS probability right after a
    # demonstration is far above the untrained model's (~1/vocab); without EOS in the labels it would fall.
    model, tok = loaded
    fresh = tiny.make_model("test", tok, seed=0)

    def p_eos(m):
        probs = []
        for row in arith.make_rows("test", 16, seed=1):
            ids = torch.tensor([tok(row["prompt"] + row["completion"])["input_ids"]])
            with torch.no_grad():
                probs.append(torch.softmax(m(ids).logits[0, -1], -1)[tok.eos_token_id].item())
        return sum(probs) / len(probs)

    assert p_eos(model) > 10 * p_eos(fresh)


def test_generate_and_evaluate_run(loaded):
    model, tok = loaded
    ds = arith.make_dataset("test", 6, seed=2)
    outs = tiny.generate_completions(model, tok, ds["prompt"], greedy=True, max_new_tokens=12, batch_size=4)
    assert len(outs) == 6 and all(isinstance(o, str) for o in outs)
    acc = tiny.evaluate(model, tok, "arith", ds, greedy=False, temperature=1.0, max_new_tokens=12, batch_size=4)
    assert 0.0 <= acc <= 1.0
    assert tok.padding_side == "right"  # restored after the left-padded batches


def test_left_padded_batches_match_one_by_one_greedy(loaded):
    model, tok = loaded
    prompts = [r["prompt"] for r in arith.make_rows("test", 4, seed=3, num_steps=1)] + [
        arith.make_rows("test", 1, seed=3, num_steps=4)[0]["prompt"]
    ]
    batched = tiny.generate_completions(model, tok, prompts, greedy=True, max_new_tokens=10, batch_size=5)
    single = [tiny.generate_completions(model, tok, [p], greedy=True, max_new_tokens=10)[0] for p in prompts]
    assert batched == single


def test_same_seed_same_weights(tmp_path, one_thread):
    from safetensors.torch import load_file

    a = tiny.build_tiny("arith", tmp_path / "a", size="test", seed=3, steps=3, batch_size=4, eval_examples=0, log=None)
    b = tiny.build_tiny("arith", tmp_path / "b", size="test", seed=3, steps=3, batch_size=4, eval_examples=0, log=None)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["final_loss"] == b["final_loss"]
    assert a["greedy_accuracy"] is None  # eval_examples=0 skips the evaluation
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="size"):
        tiny.build_tiny("arith", tmp_path, size="huge")
    with pytest.raises(UserError, match="task"):
        tiny.build_tiny("no-such-task", tmp_path, size="test")
    with pytest.raises(UserError, match="steps"):
        tiny.build_tiny("arith", tmp_path, size="test", steps=0)
