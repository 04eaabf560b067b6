"""Segment reward model: reading rewards, the variants, data preparation, the trainer's loss against TRL's."""

import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import RewardTrainer

from segrl import segment_rm
from segrl.errors import UserError
from segrl.prepare import prepare_segments
from segrl.scoring import completion_entropies_and_logps
from segrl.segmentation import token_entropy
from segrl.trainers.segment_rm import SegmentPreferenceCollator, SegmentRewardConfig, SegmentRewardTrainer

NAN = math.nan


def test_variant_segment_ids():
    # prompt, prompt, 3 body tokens in 2 segments, EOS, padding
    segment_ids = torch.tensor([[-1, -1, 0, 0, 1, -1, -1]])
    completion = torch.tensor([[0, 0, 1, 1, 1, 1, 0]]).bool()
    assert segment_rm.variant_segment_ids(segment_ids, completion, "segment").tolist() == segment_ids.tolist()
    assert segment_rm.variant_segment_ids(segment_ids, completion, "token").tolist() == [[-1, -1, 0, 1, 2, -1, -1]]
    assert segment_rm.variant_segment_ids(segment_ids, completion, "bandit").tolist() == [[-1, -1, 0, 0, 0, 0, -1]]
    with pytest.raises(UserError, match="variant"):
        segment_rm.variant_segment_ids(segment_ids, completion, "sentence")


def test_segment_rewards_and_sequence_scores():
    scores = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0], [9.0, 5.0, 9.0, 9.0, 9.0], [7.0, 7.0, 7.0, 7.0, 7.0]])
    segment_ids = torch.tensor([[-1, 0, 0, 1, -1], [-1, 0, -1, -1, -1], [-1, -1, -1, -1, -1]])
    rewards = segment_rm.segment_rewards(scores, segment_ids)
    # read at each segment's last token: row 0 -> positions 2 and 3
    torch.testing.assert_close(rewards, torch.tensor([[2.0, 3.0], [5.0, NAN], [NAN, NAN]]), equal_nan=True)
    torch.testing.assert_close(segment_rm.sequence_scores(scores, segment_ids), torch.tensor([2.5, 5.0, NAN]),
                               equal_nan=True)


def test_sequence_scores_are_differentiable():
    scores = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    segment_rm.sequence_scores(scores, torch.tensor([[0, 0, 1]])).sum().backward()
    assert scores.grad.tolist() == [[0.0, 0.5, 0.5]]  # mean of the values at positions 1 and 2


def test_new_reward_model_head_and_round_trip(random_model_dir, tmp_path):
    model = segment_rm.new_reward_model(random_model_dir, "segment", 1.5, seed=0)
    assert model.score.bias is None
    hidden = model.score.weight.shape[1]
    assert model.score.weight.std().item() == pytest.approx((1 / (hidden + 1)) ** 0.5, rel=0.5)
    model.save_pretrained(tmp_path / "rm")
    assert not list((tmp_path / "rm").glob("*.bin"))  # safetensors only
    loaded = segment_rm.load_reward_model(tmp_path / "rm", device="cpu")
    assert segment_rm.segmentation_of(loaded) == ("segment", 1.5)
    ids = torch.tensor([[3, 4, 5, 6]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    with pytest.raises(UserError, match="threshold"):
        segment_rm.new_reward_model(random_model_dir, "segment", None)


def test_load_reward_model_refuses_a_plain_model(random_model_dir):
    with pytest.raises(UserError):
        segment_rm.load_reward_model(random_model_dir)


PAIRS = [
    {"prompt": "The soup was", "chosen": " hot. The bread was fresh!", "rejected": " cold.", "id": 1},
    {"prompt": "We sat by", "chosen": " the window.", "rejected": " the door and the waiter smiled.", "id": 2},
    {"prompt": "We sat by", "chosen": " the window.", "rejected": " the window.", "id": 3},  # identical
    {"prompt": "Would we", "chosen": "", "rejected": " come back?", "id": 4},  # empty response
]


@pytest.fixture
def model_and_tokenizer(random_model_dir):
    return AutoModelForCausalLM.from_pretrained(random_model_dir).eval(), AutoTokenizer.from_pretrained(random_model_dir)


def test_prepare_segments_columns_skips_and_entropy_rule(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rows, skipped = prepare_segments(PAIRS, model, tokenizer, threshold=5.5)
    assert dict(skipped) == {"chosen equals rejected": 1, "empty response": 1}
    assert [r["id"] for r in rows] == [1, 2]
    for row in rows:
        for side in ("chosen", "rejected"):
            ids, segments = row[f"{side}_ids"], row[f"{side}_segment_ids"]
            prompt_length = row["prompt_length"]
            assert ids[:prompt_length] == tokenizer(text=row["prompt"])["input_ids"]
            assert ids[-1] == tokenizer.eos_token_id and len(segments) == len(ids)
            assert segments[:prompt_length] == [-1] * prompt_length and segments[-1] == -1  # prompt and EOS
            # independent computation of the rule: a body token opens a segment when the entropy of the
            # distribution it was drawn from exceeds the threshold
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            entropy = token_entropy(logits)  # entropy[i] is that of token i + 1
            expected, current = [], -1
            for position in range(prompt_length, len(ids) - 1):
                if position == prompt_length or entropy[position - 1] > 5.5:
                    current += 1
                expected.append(current)
            assert segments[prompt_length:-1] == expected


def test_prepare_segments_names_the_bad_row(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(UserError, match="row 2: missing field 'rejected'"):
        prepare_segments([PAIRS[0], {"prompt": "a", "chosen": "b"}], model, tokenizer, 1.0, source="pairs.jsonl")
    with pytest.raises(UserError, match="every row was skipped"):
        prepare_segments([PAIRS[2]], model, tokenizer, 1.0)


def test_entropies_match_token_entropy_on_the_shifted_logits(model_and_tokenizer):
    model, _ = model_and_tokenizer
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 8, 9]])
    entropy, logps = completion_entropies_and_logps(model, ids, torch.ones_like(ids), 3, temperature=0.5)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    torch.testing.assert_close(entropy, token_entropy(logits[:, 1:4]))
    expected = torch.log_softmax(logits[:, 1:4] / 0.5, dim=-1).gather(-1, ids[:, 2:].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logps, expected)


def _trainer(random_model_dir, tmp_path, rows, variant, **overrides):
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    model = segment_rm.new_reward_model(random_model_dir, variant, 5.5 if variant == "segment" else None, seed=0)
    config = SegmentRewardConfig(
        output_dir=str(tmp_path / variant), variant=variant, per_device_train_batch_size=2, report_to="none",
        use_cpu=True, bf16=False, save_strategy="no", logging_steps=1, **overrides,
    )
    trainer = SegmentRewardTrainer(model, config, Dataset.from_list(rows), tokenizer)
    trainer.model.train()  # as in training (dropout is off): metrics go under "train"
    return trainer


def _prepared(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    return prepare_segments(PAIRS[:2], model, tokenizer, threshold=5.5)[0]


def test_bandit_loss_equals_trl_reward_trainer_loss(random_model_dir, tmp_path, model_and_tokenizer):
    """One segment per response read at EOS: the loss is RewardTrainer's on the same scores."""
    rows = _prepared(model_and_tokenizer)
    trainer = _trainer(random_model_dir, tmp_path, rows, "bandit", center_rewards_coefficient=0.01)
    batch = trainer.data_collator(rows)
    loss = trainer.compute_loss(trainer.model, batch)

    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., 0]
    eos_position = batch["attention_mask"].sum(dim=1) - 1
    at_eos = logits.gather(1, eos_position[:, None])  # (2B, 1), what a sequence classifier reads

    class Stub(torch.nn.Module):
        def forward(self, **kwargs):
            return type("Out", (), {"logits": at_eos})()

    expected = RewardTrainer.compute_loss(trainer, Stub(), {"input_ids": batch["input_ids"],
                                                            "attention_mask": batch["attention_mask"]})
    torch.testing.assert_close(loss.detach(), expected)


def test_segment_loss_is_bradley_terry_on_mean_segment_rewards(random_model_dir, tmp_path, model_and_tokenizer):
    rows = _prepared(model_and_tokenizer)
    trainer = _trainer(random_model_dir, tmp_path, rows, "segment")
    batch = trainer.data_collator(rows)
    loss = trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., 0]
    means = []
    for row, ids in zip(logits, batch["segment_ids"]):  # the last token of each segment, by a plain loop
        last = {int(s): i for i, s in enumerate(ids.tolist()) if s >= 0}
        means.append(sum(row[i] for i in last.values()) / len(last))
    chosen, rejected = torch.stack(means).chunk(2)
    expected = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    torch.testing.assert_close(loss.detach(), expected)
    assert trainer._metrics["train"]["skipped_pairs"] == [0]


def test_pair_without_segments_is_skipped_and_counted(random_model_dir, tmp_path, model_and_tokenizer):
    rows = _prepared(model_and_tokenizer)
    broken = dict(rows[0], chosen_segment_ids=[-1] * len(rows[0]["chosen_segment_ids"]))
    trainer = _trainer(random_model_dir, tmp_path, [broken, rows[1]], "segment")
    loss = trainer.compute_loss(trainer.model, trainer.data_collator([broken, rows[1]]))
    assert torch.isfinite(loss)
    assert trainer._metrics["train"]["skipped_pairs"] == [1]
    only_broken = trainer.compute_loss(trainer.model, trainer.data_collator([broken]))
    assert only_broken.item() == 0.0 and only_broken.requires_grad


def test_trainer_requires_prepared_data(random_model_dir, tmp_path):
    with pytest.raises(UserError, match="prepare-segments"):
        _trainer(random_model_dir, tmp_path, [{"prompt": "a", "chosen": "b", "rejected": "c"}], "segment")


def test_collator_masks():
    collate = SegmentPreferenceCollator(pad_token_id=0)
    batch = collate([{"chosen_ids": [5, 6, 7, 2], "rejected_ids": [5, 8, 2], "prompt_length": 1,
                      "chosen_segment_ids": [-1, 0, 1, -1], "rejected_segment_ids": [-1, 0, -1]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2], [5, 8, 2, 0]]
    assert batch["segment_ids"].tolist() == [[-1, 0, 1, -1], [-1, 0, -1, -1]]
    assert batch["completion_mask"].long().tolist() == [[0, 1, 1, 1], [0, 1, 1, 0]]


def test_training_separates_a_learnable_preference(random_model_dir, tmp_path, model_and_tokenizer):
    """Chosen responses say 'fresh', rejected ones 'cold': a few dozen steps reach full training accuracy."""
    model, tokenizer = model_and_tokenizer
    pairs = [{"prompt": p, "chosen": " fresh and hot.", "rejected": " cold and sad."}
             for p in ["The soup was", "The bread was", "We sat by", "Would we"]]
    rows = prepare_segments(pairs, model, tokenizer, threshold=5.5)[0]
    trainer = _trainer(random_model_dir, tmp_path, rows, "segment", learning_rate=3e-3, max_steps=30)
    before = trainer.compute_loss(trainer.model, trainer.data_collator(rows)).item()
    trainer.train()
    trainer.model.eval()
    with torch.no_grad():
        after = trainer.compute_loss(trainer.model, trainer.data_collator(rows)).item()
    assert before > 0.3 and after < 0.1
    assert trainer._metrics["eval"]["accuracy"][-1] == 1.0


def test_prepared_file_round_trip_and_fit_normalizer(random_model_dir, tmp_path, model_and_tokenizer):
    from segrl.normalizers import LocationNormalizer, load_normalizer
    from segrl.prepare import write_jsonl
    from segrl.reward_training import fit_normalizer, score_pairs

    model, tokenizer = model_and_tokenizer
    pairs = [{"prompt": p, "chosen": c, "rejected": r}
             for p in ["The soup was", "We sat by the", "Would we", "The waiter"]
             for c, r in [(" hot. The bread was fresh!", " cold."), (" the window.", " by the door and smiled.")]]
    rows = prepare_segments(pairs, model, tokenizer, threshold=4.0)[0]
    write_jsonl(tmp_path / "heldout.jsonl", [dict(r, segment_threshold=4.0) for r in rows])
    rm = segment_rm.new_reward_model(random_model_dir, "segment", 4.0, seed=0)
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")

    scored = score_pairs(rm.eval(), rows, tokenizer.pad_token_id)
    first = scored[0]["chosen"]
    assert len(first["segment_rewards"]) == max(rows[0]["chosen_segment_ids"]) + 1
    assert first["score"] == pytest.approx(sum(first["segment_rewards"]) / len(first["segment_rewards"]))

    summary = fit_normalizer(str(tmp_path / "rm"), str(tmp_path / "heldout.jsonl"), tmp_path / "norm.json")
    assert summary["variant"] == "segment" and summary["responses"] == 2 * len(rows)
    normalizer = load_normalizer(tmp_path / "norm.json")
    assert isinstance(normalizer, LocationNormalizer)
    assert json.loads((tmp_path / "norm.json").read_text())["kind"] == "location"


def test_prepare_segments_takes_conversational_rows(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    row = {"prompt": [{"role": "user", "content": "The soup was"}],
           "chosen": [{"role": "assistant", "content": " hot."}],
           "rejected": [{"role": "assistant", "content": " cold."}]}
    (prepared,), skipped = prepare_segments([row], model, tokenizer, threshold=5.5)
    prompt_text = "user: The soup was\nassistant:"
    assert prepared["prompt_length"] == len(tokenizer(text=prompt_text)["input_ids"])
    assert prepared["chosen_ids"] == tokenizer(text=prompt_text)["input_ids"] + tokenizer(
        text=" hot.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert not skipped
