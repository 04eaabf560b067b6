"""ReMedy end to end on a tiny random model: train (RewardTrainer with the centring term), score files, meta-evaluate."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from segrl.cli import app
from segrl.remedy.data import ratings_from_rows
from segrl.remedy.inputs import encode
from segrl.remedy.meta_eval import meta_evaluate
from segrl.remedy.scoring import load_remedy, score

SYSTEMS = {"good": 0.0, "fair": -3.0, "poor": -8.0}


def rows():
    out = []
    for lp in ("en-de", "en-cs"):
        for i in range(12):
            for system, quality in SYSTEMS.items():
                out.append({"lp": lp, "src": f"The soup {i} was hot.", "ref": f"Die Suppe {i} war heiss.",
                            "mt": f"{system} soup {i}", "system": system, "score": quality - (i % 3)})
    return out


@pytest.fixture(scope="module")
def backbone(random_model_dir, tmp_path_factory):
    """The fixture's tokenizer with a random Llama long enough for translation requests (512 positions)."""
    path = tmp_path_factory.mktemp("remedy-backbone")
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained(backbone, tmp_path_factory):
    root = tmp_path_factory.mktemp("remedy-run")
    (root / "ratings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()))
    result = CliRunner().invoke(app, [
        "remedy", "train", "--train_file", str(root / "ratings.jsonl"), "--model", str(backbone),
        "--test_fraction", "0.25", "--max_steps", "3", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--learning_rate", "1e-3", "--report_to", "none", "--save_strategy", "no", "--output_dir", str(root / "out"),
    ])
    assert result.exit_code == 0, result.output
    return root


def test_train_writes_model_calibration_and_metrics(trained):
    final = trained / "out" / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    info = json.loads((final / "remedy.json").read_text())
    assert info["reference_free"] is False and info["language_pairs"] == ["en-cs", "en-de"]
    assert json.loads((final / "calibration.json").read_text())["global_temperature"] > 0
    config = json.loads((trained / "out" / "config.json").read_text())
    assert config["trainer"]["center_rewards_coefficient"] == 0.01  # segrl's default for ReMedy's regulariser
    # every training source has 3 ratings and 3 pairs (the three systems always differ: no ties)
    assert config["pairs"]["ties"] == 0 and config["pairs"]["pairs"] == config["ratings"]["train"]
    steps = [json.loads(line) for line in (trained / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any("accuracy" in s and "loss" in s for s in steps)


def test_batched_scores_equal_one_at_a_time_forwards(trained):
    model, tokenizer, _, _ = load_remedy(trained / "out" / "final", device="cpu")
    sources, hypotheses = ["The soup 1 was hot.", "a"], ["good soup 1", "a much longer poor soup translation here"]
    batched = score(model, tokenizer, sources, hypotheses, ["en-de", "en-cs"], ["Die Suppe 1 war heiss.", "b"])
    for i, (s, h, lp, r) in enumerate(zip(sources, hypotheses, ["en-de", "en-cs"], ["Die Suppe 1 war heiss.", "b"])):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([encode(tokenizer, s, h, lp, r)])).logits[0, 0].item()
        assert batched[i] == pytest.approx(alone, abs=1e-5)


def test_score_files(trained, tmp_path):
    for name, lines in {"src": ["The soup 1 was hot.", "The soup 2 was hot."], "mt": ["good soup 1", "poor soup 2"],
                        "ref": ["Die Suppe 1 war heiss.", "Die Suppe 2 war heiss."]}.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    final = str(trained / "out" / "final")
    args = ["remedy", "score", "--model", final, "--src", str(tmp_path / "src.txt"), "--mt", str(tmp_path / "mt.txt"),
            "--ref", str(tmp_path / "ref.txt"), "--lp", "en-de", "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = (tmp_path / "out" / "scores.tsv").read_text().splitlines()
    assert table[0] == "line\traw\tsigmoid\tcalibrated" and len(table) == 3
    raw = [float(line.split("\t")[1]) for line in table[1:]]
    sig = [float(line.split("\t")[2]) for line in table[1:]]
    assert sig == pytest.approx([1 / (1 + math.exp(-r)) for r in raw], abs=1e-6)
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    assert summary["system_score"]["raw"] == pytest.approx(np.mean(raw), abs=1e-5)
    assert summary["signature"].startswith("segrl-remedy|model:final|ref:yes|lp:en-de|calib:T=")

    (tmp_path / "mt.txt").write_text("good soup 1\n")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "different line counts" in result.output and "mt.txt 1" in result.output
    (tmp_path / "mt.txt").write_text("good soup 1\n\n")
    assert "mt.txt:2: empty hypothesis" in CliRunner().invoke(app, args).output
    no_ref = [a for a in args if a not in ("--ref", str(tmp_path / "ref.txt"))] + ["--no-ref"]
    assert "trained with references: give --ref" in CliRunner().invoke(app, no_ref).output
    bad_lp = args[:-4] + ["--lp", "en-xx", "-o", str(tmp_path / "out")]
    assert "--lp: unknown language code 'xx'" in CliRunner().invoke(app, bad_lp).output


def test_meta_eval_of_the_human_scores_themselves_is_perfect():
    ratings = ratings_from_rows(rows(), "rows")
    results = meta_evaluate(ratings, [r.score for r in ratings], num_permutations=200)
    for lp in ("en-de", "en-cs", "average"):
        for key in ("acc_eq", "tau_b", "tau_c", "system_accuracy", "soft_pairwise_accuracy"):
            assert results[lp][key] == pytest.approx(1.0), (lp, key)
    reversed_ = meta_evaluate(ratings, [-r.score for r in ratings], num_permutations=200)
    assert reversed_["average"]["acc_eq"] == pytest.approx(0.0) and reversed_["average"]["tau_b"] == pytest.approx(-1)
    assert reversed_["average"]["system_accuracy"] == 0.0


def test_meta_eval_cli_with_chrf(trained, tmp_path):
    result = CliRunner().invoke(app, ["remedy", "meta-eval", "--metric", "chrf", "--ratings",
                                      str(trained / "ratings.jsonl"), "--permutations", "100", "-o",
                                      str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "m.json").read_text())["results"]
    assert set(results) == {"en-de", "en-cs", "average"}
    assert "| average |" in result.output
    result = CliRunner().invoke(app, ["remedy", "meta-eval", "--metric", str(trained / "out" / "final"),
                                      "--ratings", str(trained / "ratings.jsonl"), "--permutations", "50"])
    assert result.exit_code == 0, result.output


def test_reference_free_model_refuses_references(backbone, tmp_path):
    (tmp_path / "ratings.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "ref"}) + "\n"
                                                    for r in rows()))
    args = ["remedy", "train", "--train_file", str(tmp_path / "ratings.jsonl"), "--model", str(backbone),
            "--max_steps", "1", "--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "no",
            "--output_dir", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "train reference-free with --no_ref" in result.output
    result = CliRunner().invoke(app, args + ["--no_ref", "true"])
    assert result.exit_code == 0, result.output
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "final")
    assert model.config.num_labels == 1
    assert json.loads((tmp_path / "out" / "final" / "remedy.json").read_text())["reference_free"] is True
    shutil.rmtree(tmp_path / "out")


def write_wmt(root):
    """rows() in WMT's mt-metrics-eval layout: per language pair a source and a reference file, one output file per
    system, and the system's segment scores (one 'None': unrated)."""
    for lp in ("en-de", "en-cs"):
        mine = [r for r in rows() if r["lp"] == lp]
        sources = list(dict.fromkeys(r["src"] for r in mine))
        for folder in ("sources", "references", "human-scores", f"system-outputs/{lp}"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        (root / "sources" / f"{lp}.txt").write_text("".join(s + "\n" for s in sources))
        (root / "references" / f"{lp}.refA.txt").write_text("".join(f"Die Suppe {i} war heiss.\n"
                                                                     for i in range(len(sources))))
        scores = []
        for system in SYSTEMS:
            outputs = [r for r in mine if r["system"] == system]
            (root / "system-outputs" / lp / f"{system}.txt").write_text("".join(r["mt"] + "\n" for r in outputs))
            scores += [f"{system}\t{'None' if (system, i) == ('fair', 0) else r['score']}\n"
                       for i, r in enumerate(outputs)]
        (root / "human-scores" / f"{lp}.seg.mqm.score").write_text("".join(scores))
    return root


def test_train_and_meta_evaluate_from_a_wmt_directory(backbone, tmp_path):
    wmt = write_wmt(tmp_path / "wmt")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "remedy", "train", "--wmt_dir", str(wmt), "--wmt_lps", "en-de", "en-cs", "--model", str(backbone),
        "--test_fraction", "0.25", "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none",
        "--save_strategy", "no", "--output_dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "en-de: 35 rated translations (1 unrated skipped)" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["ratings"]["train"] + config["ratings"]["held_out"] == 70
    assert config["trainer"]["center_rewards_coefficient"] == 0.01  # RemedyConfig's default
    result = CliRunner().invoke(app, ["remedy", "meta-eval", "--metric", "chrf", "--wmt-dir", str(wmt), "--lp",
                                      "en-de", "--permutations", "20", "-o", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "m.json").read_text())
    assert set(saved["results"]) == {"en-de", "average"} and saved["ratings"] == f"{wmt} (en-de)"
    result = CliRunner().invoke(app, ["remedy", "train", "--wmt_dir", str(wmt), "--model", str(backbone),
                                      "--output_dir", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--wmt_dir needs --wmt_lps" in result.output
