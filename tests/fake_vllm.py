"""A stand-in for a ``trl vllm-serve`` server, so that TRL's vLLM server-mode path runs on a CPU without vLLM.

:func:`install` replaces the HTTP client class that TRL's ``VLLMGeneration`` creates on the main process with
:class:`FakeVLLMClient`, and makes TRL believe vLLM is installed. Everything else is TRL's own code: the gather of
every process's prompts, the main process's one request per call (``prompts[::num_generations]`` with
``n=num_generations``), the broadcast of the answers and each process's slice of them, the weight sync before a
step's first call, and the importance-sampling correction.

The fake server keeps its own copy of the policy, which it gets only through ``update_named_params`` (as a real
server does), and samples with a plain loop at the requested temperature: sample ``j`` of a prompt is drawn from a
generator seeded by (prompt, j), so the answers do not depend on how requests are batched or split over processes.
It returns the sampled tokens (the EOS included, as vLLM does) and their log-probs after temperature scaling
(vLLM's ``processed_logprobs``). Sampling settings it does not implement are refused, not ignored.
"""

from __future__ import annotations

import zlib

import torch

REQUESTS: list[dict] = []  # every generate request the server received (main process), in order


class FakeVLLMClient:
    model_dir: str = ""  # the model the server was started with (set by install)

    def __init__(self, base_url: str, group_port: int, connection_timeout: float):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir).eval()
        self.eos = set(self.model.generation_config.eos_token_id if isinstance(
            self.model.generation_config.eos_token_id, list) else [self.model.generation_config.eos_token_id])
        self.synced = 0  # weight syncs received

    def init_communicator(self, device) -> None:
        pass

    def get_server_info(self) -> dict:
        return {"model_config": {"logprobs_mode": "processed_logprobs"}}

    def update_named_params(self, metadata, named_params) -> None:
        params = dict(self.model.named_parameters())
        names = [name for name, _, _ in metadata]
        assert set(names) == set(params), "the trainer must send every parameter, under the server's names"
        received = []
        for (name, dtype, shape), (sent_name, tensor) in zip(metadata, named_params, strict=True):
            assert sent_name == name and list(tensor.shape) == shape
            params[name].data.copy_(tensor.detach().to(params[name].dtype))
            received.append(name)
        assert received == names
        self.synced += 1

    def reset_prefix_cache(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, prompts, features=None, n=1, repetition_penalty=1.0, temperature=1.0, top_p=1.0, top_k=0,
                 min_p=0.0, max_tokens=16, logprobs=0, structured_outputs_regex=None, generation_kwargs=None) -> dict:
        unsupported = {"features": features, "repetition_penalty": repetition_penalty != 1.0, "top_p": top_p != 1.0,
                       "top_k": top_k not in (0, -1, None), "min_p": bool(min_p),
                       "structured_outputs_regex": structured_outputs_regex, "generation_kwargs": generation_kwargs,
                       "logprobs": logprobs != 0}
        assert not any(unsupported.values()), f"the fake server does not implement {unsupported}"
        weights = torch.cat([p.flatten() for p in self.model.parameters()]).clone()
        completions, token_logprobs = [], []
        for prompt in prompts:
            for j in range(n):
                tokens, lps = self._sample(list(prompt), j, temperature, max_tokens)
                completions.append(tokens)
                token_logprobs.append(lps)
        REQUESTS.append({"prompts": [list(p) for p in prompts], "n": n, "max_tokens": max_tokens, "weights": weights,
                         "generated": sum(map(len, completions))})
        return {"prompt_ids": [list(p) for p in prompts], "completion_ids": completions,
                "logprobs": [[[lp] for lp in lps] for lps in token_logprobs],
                "logprob_token_ids": [[[t] for t in tokens] for tokens in completions]}

    def _sample(self, prompt: list[int], j: int, temperature: float, max_tokens: int) -> tuple[list[int], list[float]]:
        generator = torch.Generator().manual_seed(zlib.crc32(repr((prompt, j)).encode()))
        tokens, lps = [], []
        while len(tokens) < max_tokens:
            logits = self.model(input_ids=torch.tensor([prompt + tokens])).logits[0, -1].float()
            logp = torch.log_softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(logp.exp(), 1, generator=generator))
            tokens.append(token)
            lps.append(float(logp[token]))
            if token in self.eos:
                break
        return tokens, lps


def install(monkeypatch_or_none, model_dir: str) -> None:
    """Make TRL's vLLM server mode talk to :class:`FakeVLLMClient` (serving ``model_dir``). With a pytest
    ``monkeypatch`` the change is undone after the test; with None it lasts for the process (launched scripts)."""
    import trl.generation.vllm_generation as vllm_generation

    FakeVLLMClient.model_dir = str(model_dir)
    REQUESTS.clear()
    for name, value in (("VLLMClient", FakeVLLMClient), ("is_vllm_available", lambda: True)):
        if monkeypatch_or_none is None:
            setattr(vllm_generation, name, value)
        else:
            monkeypatch_or_none.setattr(vllm_generation, name, value)
