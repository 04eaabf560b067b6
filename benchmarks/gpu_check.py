"""Correctness checks of segrl on one CUDA GPU; `benchmarks/gpu_check.sh` runs it, then the throughput benchmark.

    python benchmarks/gpu_check.py --model smollm2-135m --output runs/gpu_check/correctness.json

Checks (each passes or fails on its own; the exit status is 1 if any failed):

1. ``core_on_gpu``: segrl's pure functions (cutpoint segments, chain advantages, tree values, probability mask,
   whitening, box IoU) give on CUDA what they give on CPU for the same random inputs (1e-6).
2. ``bf16_logps``: per-token log-probs of sampled completions under the bf16 policy against the same model in fp32
   (mean absolute difference < 0.05 nats: bf16 does not distort SPO's cutpoints much at ρ = 0.9).
3. ``mc_shared_prefix``: Monte Carlo rollouts that encode each state once (``segrl.mc_rollouts``) give the same
   greedy continuations as ``generate`` on the repeated states (at least 90% of rows: other matmul shapes can flip a
   near-tie), and how much faster they sample 9 continuations of 12 states.
4. ``spo_chain_bf16`` and ``spo_tree_bf16``: SPO trains 2 steps in bf16 with HF generation: finite losses, MC tokens
   generated (chain), trees grown (tree).
5. ``spo_chain_vllm`` and ``spo_tree_vllm``: the same runs with ``use_vllm`` (TRL's colocated vLLM, prefix caching
   on) for the policy samples, the MC rollouts and the tree levels (tree: without TRL's importance-sampling
   correction, which it does not support); recorded as skipped when vllm is not installed.

``--allow-cpu`` runs everything on the CPU instead (a dry run of this script where there is no GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import tempfile
import time
import traceback
from pathlib import Path

import torch


def check_core_on_gpu(device: str) -> dict:
    from segrl import advantages as adv
    from segrl import segmentation as seg
    from segrl.rewards.lens import box_iou

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(16, 40, generator=g)
    mask = torch.arange(40)[None, :] < torch.randint(5, 41, (16, 1), generator=g)
    rewards = torch.rand(16, generator=g)
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 2])
    leaf_rewards = torch.tensor([math.nan, math.nan, math.nan, 1.0, 0.0, 0.0, 1.0])
    boxes = torch.rand(32, 4, generator=g).sort(dim=1).values[:, [0, 1, 2, 3]]

    def run(dev):
        p, m = probs.to(dev), mask.to(dev)
        ids = seg.cutpoint_segments(p, m, 0.9, 2)
        bounds = adv.chain_boundaries(ids, seg.low_probability_mask(p, m, 0.9))
        values = torch.rand(len(bounds.row), generator=torch.Generator().manual_seed(1)).to(dev)
        chain = adv.chain_advantages(bounds.start_values(values), rewards.to(dev), ids)
        loss_mask, _ = adv.probability_mask(p, m, 0.9)
        return {"segment_ids": ids, "chain": chain, "loss_mask": loss_mask,
                "whitened": adv.whiten(chain, loss_mask),
                "tree": adv.tree_values(parents.to(dev), leaf_rewards.to(dev)),
                "box_iou": box_iou(boxes[:16].to(dev), boxes[16:].to(dev))}

    cpu, gpu = run("cpu"), run(device)
    worst = {k: float((cpu[k].double() - gpu[k].cpu().double()).abs().max()) for k in cpu}
    return {"passed": all(v <= 1e-6 for v in worst.values()), "max_abs_difference": worst}


def check_bf16_logps(model_name: str, device: str) -> dict:
    from segrl.models import load_model
    from segrl.tasks import get_task

    model, tokenizer = load_model(model_name, device=device)
    tokenizer.padding_side = "left"
    prompts = get_task("arith").make_dataset("test", 16, seed=0)["prompt"]
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True).to(device)
    torch.manual_seed(0)
    with torch.no_grad():
        ids = model.generate(**batch, max_new_tokens=48, do_sample=True, pad_token_id=tokenizer.pad_token_id)
        attention = torch.cat([batch["attention_mask"], (ids[:, batch["input_ids"].shape[1]:] != tokenizer.pad_token_id)
                               .long()], dim=1)

        def logps(m):
            logits = m(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
            return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]

        fp32 = logps(model.float())
        bf16 = logps(model.to(torch.bfloat16))
    keep = attention[:, 1:].bool()
    keep[:, : batch["input_ids"].shape[1] - 1] = False  # completion tokens only
    difference = (fp32 - bf16).abs()[keep]
    return {"passed": float(difference.mean()) < 0.05, "mean_abs_nats": float(difference.mean()),
            "max_abs_nats": float(difference.max()), "tokens": int(keep.sum())}


def check_mc_shared_prefix(model_name: str, device: str, num_samples: int = 9) -> dict:
    """Greedy continuations with each state encoded once (segrl.mc_rollouts) against ``generate`` on the states
    repeated ``num_samples`` times, and the time of each (sampling, after one warm-up call)."""
    from transformers import GenerationConfig

    from segrl.mc_rollouts import sample_continuations
    from segrl.models import load_model
    from segrl.tasks import get_task

    model, tokenizer = load_model(model_name, device=device)
    prompts = get_task("arith").make_dataset("test", 12, seed=0)["prompt"]
    states = [tokenizer(p, add_special_tokens=False)["input_ids"][: 20 + 4 * i] for i, p in enumerate(prompts)]
    greedy = GenerationConfig(do_sample=False, max_new_tokens=24, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)

    def repeated(config):
        tokenizer.padding_side = "left"
        batch = tokenizer.pad({"input_ids": [s for s in states for _ in range(num_samples)]}, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch.to(device), generation_config=config)
        rows = out[:, batch["input_ids"].shape[1]:].tolist()
        return [row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row for row in rows]

    shared = sample_continuations(model, states, num_samples, 24, greedy)
    if shared is None:
        return {"passed": False, "error": "the model's cache cannot be shared"}
    agree = sum(a == b for a, b in zip(shared, repeated(greedy))) / len(shared)
    sampling = GenerationConfig(do_sample=True, temperature=1.0, max_new_tokens=24, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id)
    seconds = {}
    for name, run in (("shared", lambda: sample_continuations(model, states, num_samples, 24, sampling)),
                      ("repeated", lambda: repeated(sampling))):
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds[name] = time.perf_counter() - start
    # TF32 or bf16 matmuls of other shapes can flip a near-tie argmax, and a flip changes the rest of the row.
    return {"passed": agree >= 0.9, "greedy_rows_equal": agree, "seconds": seconds,
            "speedup": seconds["repeated"] / seconds["shared"]}


def check_spo(model_name: str, device: str, mode: str, use_vllm: bool) -> dict:
    from transformers import PrinterCallback

    from segrl.models import load_model
    from segrl.tasks import get_task
    from segrl.trainers.spo import SPOConfig, SPOTrainer

    model, tokenizer = load_model(model_name, device=device)
    tokenizer.padding_side = "left"
    task = get_task("arith")
    on_gpu = device == "cuda"
    extra = dict(tree_branching=[2, 2], segment_length=12) if mode == "tree" else dict(num_mc_samples=4)
    if use_vllm:
        extra.update(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
                     vllm_importance_sampling_correction=mode == "chain")
    with tempfile.TemporaryDirectory() as out:
        config = SPOConfig(output_dir=out, spo_mode=mode, per_device_train_batch_size=16, num_generations=8,
                           max_completion_length=48, max_steps=2, logging_steps=1, save_strategy="no",
                           report_to="none", disable_tqdm=True, learning_rate=1e-6, bf16=on_gpu, use_cpu=not on_gpu,
                           **extra)
        trainer = SPOTrainer(model=model, reward_funcs=[task.reward], args=config, processing_class=tokenizer,
                             train_dataset=task.make_dataset("train", 64, seed=0))
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    steps = [log for log in trainer.state.log_history if "loss" in log]
    result = {"seconds": seconds, "losses": [log["loss"] for log in steps],
              "generated_tokens": trainer.generated_tokens}
    finite = len(steps) == 2 and all(math.isfinite(x) for x in result["losses"])
    if mode == "chain":
        result["mc_tokens"] = [log.get("segments/mc_tokens", 0) for log in steps]
        result["passed"] = finite and all(t > 0 for t in result["mc_tokens"])
    else:
        result["tree_nodes"] = [log.get("segments/tree_nodes", 0) for log in steps]
        result["passed"] = finite and all(n > 0 for n in result["tree_nodes"])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--output", default="runs/gpu_check/correctness.json")
    parser.add_argument("--allow-cpu", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("gpu_check: no CUDA GPU (use --allow-cpu for a dry run on the CPU)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    has_vllm = importlib.util.find_spec("vllm") is not None
    checks = {
        "core_on_gpu": lambda: check_core_on_gpu(device),
        "bf16_logps": lambda: check_bf16_logps(args.model, device),
        "mc_shared_prefix": lambda: check_mc_shared_prefix(args.model, device),
        "spo_chain_bf16": lambda: check_spo(args.model, device, "chain", use_vllm=False),
        "spo_tree_bf16": lambda: check_spo(args.model, device, "tree", use_vllm=False),
    }
    for mode in ("chain", "tree"):
        checks[f"spo_{mode}_vllm"] = ((lambda mode=mode: check_spo(args.model, device, mode, use_vllm=True))
                                      if has_vllm and device == "cuda" else None)
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "model": args.model,
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "checks": {}}
    for name, check in checks.items():
        if check is None:
            results["checks"][name] = {"skipped": "vllm is not installed" if not has_vllm else "no GPU"}
        else:
            try:
                results["checks"][name] = check()
            except Exception as error:  # one failed check must not hide the others
                results["checks"][name] = {"passed": False, "error": repr(error), "traceback": traceback.format_exc()}
        print(f"{name:<16} {json.dumps(results['checks'][name])[:300]}", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    failed = [n for n, r in results["checks"].items() if r.get("passed") is False]
    print(f"gpu_check: {len(failed)} failed {failed}" if failed else "gpu_check: all checks passed or skipped")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
