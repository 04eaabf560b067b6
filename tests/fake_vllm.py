"""Stand-ins for vLLM, so that TRL's vLLM paths run on a CPU without vLLM installed.

:func:`install` makes TRL believe vLLM is installed and replaces the two objects TRL's ``VLLMGeneration`` talks to:
the HTTP client of ``trl vllm-serve`` (server mode) with :class:`FakeVLLMClient`, and vLLM's ``LLM`` engine
(colocate mode) with :class:`FakeLLM`. Everything else is TRL's own code: in server mode the gather of every
process's prompts, the main process's one request per call (``prompts[::num_generations]``, ``n=num_generations``),
the broadcast of the answers and each process's slice of them; in both modes the weight sync before a step's first
call, the reading of vLLM's outputs and log-probs, and the importance-sampling correction.

Both hold their own copy of the policy (:class:`Engine`), which gets the trainer's weights only through the sync, as
vLLM does. They sample with a plain loop at the requested temperature: sample ``j`` of a prompt is drawn from a
generator seeded by (prompt, j), so the answers do not depend on how requests are batched or split over processes.
They return the sampled tokens (the EOS included, as vLLM does) and their log-probs after temperature scaling
(vLLM's ``processed_logprobs``). Sampling settings they do not implement are refused, not ignored.
"""

from __future__ import annotations

import collections
import types
import zlib

import torch

REQUESTS: list[dict] = []  # every generate call the fake vLLM received (server: main process only), in order


class Engine:
    """The fake's own copy of the policy and its sampler."""

    def __init__(self, model_dir: str):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.loaded: list[str] = []  # names of the parameters received since the last reset_prefix_cache
        self.synced = 0  # completed weight syncs

    def load(self, named_params) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in named_params:
            assert name in params and params[name].shape == tensor.shape, f"unknown parameter {name}"
            params[name].data.copy_(tensor.detach().to(params[name].dtype))
            self.loaded.append(name)

    def reset_prefix_cache(self) -> None:
        """TRL resets the cache after every sync: check that the sync sent every parameter once."""
        assert sorted(self.loaded) == sorted(name for name, _ in self.model.named_parameters())
        self.loaded = []
        self.synced += 1

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], samples: list[int], temperature: float, max_tokens: int,
               **unsupported) -> tuple[list[list[int]], list[list[float]]]:
        """Sample ``samples[i]`` (its index j) of ``prompts[i]``; record the call."""
        assert not any(unsupported.values()), f"the fake vLLM does not implement {unsupported}"
        weights = torch.cat([p.flatten() for p in self.model.parameters()]).clone()
        completions, logprobs = [], []
        for prompt, j in zip(prompts, samples, strict=True):
            generator = torch.Generator().manual_seed(zlib.crc32(repr((list(prompt), j)).encode()))
            tokens, lps = [], []
            while len(tokens) < max_tokens:
                logits = self.model(input_ids=torch.tensor([list(prompt) + tokens])).logits[0, -1].float()
                logp = torch.log_softmax(logits / temperature, dim=-1)
                token = int(torch.multinomial(logp.exp(), 1, generator=generator))
                tokens.append(token)
                lps.append(float(logp[token]))
                if token in self.eos:
                    break
            completions.append(tokens)
            logprobs.append(lps)
        REQUESTS.append({"prompts": [list(p) for p in prompts], "n": max(samples, default=-1) + 1,
                         "max_tokens": max_tokens, "weights": weights, "generated": sum(map(len, completions))})
        return completions, logprobs


def _unsupported(repetition_penalty=1.0, top_p=1.0, top_k=0, min_p=0.0, logprobs=0, **others) -> dict:
    return {"repetition_penalty": repetition_penalty != 1.0, "top_p": top_p != 1.0, "top_k": top_k not in (0, -1),
            "min_p": bool(min_p), "logprobs": logprobs != 0, **{k: v for k, v in others.items() if v}}


class FakeVLLMClient:
    """Server mode: TRL's ``VLLMClient`` (``trl vllm-serve`` over HTTP)."""

    model_dir: str = ""  # the model the server was started with (set by install)

    def __init__(self, base_url: str, group_port: int, connection_timeout: float):
        self.engine = Engine(self.model_dir)

    def init_communicator(self, device) -> None:
        pass

    def get_server_info(self) -> dict:
        return {"model_config": {"logprobs_mode": "processed_logprobs"}}

    def update_named_params(self, metadata, named_params) -> None:
        sent = list(named_params)
        assert [(name, list(t.shape)) for name, t in sent] == [(name, shape) for name, _, shape in metadata]
        self.engine.load(sent)

    def reset_prefix_cache(self) -> None:
        self.engine.reset_prefix_cache()

    def generate(self, prompts, features=None, n=1, temperature=1.0, max_tokens=16, structured_outputs_regex=None,
                 generation_kwargs=None, **settings) -> dict:
        completions, logprobs = self.engine.sample(
            [p for p in prompts for _ in range(n)], [j for _ in prompts for j in range(n)], temperature, max_tokens,
            **_unsupported(**settings, features=features, structured_outputs_regex=structured_outputs_regex,
                           generation_kwargs=generation_kwargs))
        return {"prompt_ids": [list(p) for p in prompts], "completion_ids": completions,
                "logprobs": [[[lp] for lp in lps] for lps in logprobs],
                "logprob_token_ids": [[[t] for t in tokens] for tokens in completions]}


class FakeSamplingParams:
    def __init__(self, **settings):
        self.settings = settings


class FakeLLM:
    """Colocate mode: vLLM's ``LLM`` in the training process. Prompts come repeated, one sample each (``n=1``): the
    k-th occurrence of a prompt in a call is its sample k."""

    def __init__(self, model: str, **engine_settings):
        self.engine = Engine(model)
        runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=self.engine.load))
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner)))

    def reset_prefix_cache(self) -> None:
        self.engine.reset_prefix_cache()

    def generate(self, prompts: list[dict], sampling_params: FakeSamplingParams, use_tqdm: bool = False) -> list:
        settings = dict(sampling_params.settings)
        assert settings.pop("n") == 1
        temperature, max_tokens = settings.pop("temperature"), settings.pop("max_tokens")
        assert all(set(row) == {"prompt_token_ids"} for row in prompts), "multimodal prompts are not implemented"
        ids = [row["prompt_token_ids"] for row in prompts]
        seen = collections.Counter()
        samples = []
        for prompt in ids:
            samples.append(seen[tuple(prompt)])
            seen[tuple(prompt)] += 1
        completions, logprobs = self.engine.sample(ids, samples, temperature, max_tokens, **_unsupported(**settings))
        logprob = lambda value: types.SimpleNamespace(logprob=value, rank=1)  # noqa: E731
        return [types.SimpleNamespace(prompt_token_ids=prompt, outputs=[types.SimpleNamespace(
                    token_ids=tokens, logprobs=[{t: logprob(lp)} for t, lp in zip(tokens, lps)])])
                for prompt, tokens, lps in zip(ids, completions, logprobs)]


def install(monkeypatch_or_none, model_dir: str) -> None:
    """Make TRL's vLLM paths use the fakes (the server serving ``model_dir``). With a pytest ``monkeypatch`` the
    change is undone after the test; with None it lasts for the process (launched scripts)."""
    import trl.generation.vllm_generation as vllm_generation

    FakeVLLMClient.model_dir = str(model_dir)
    REQUESTS.clear()
    fakes = {"VLLMClient": FakeVLLMClient, "LLM": FakeLLM, "SamplingParams": FakeSamplingParams,
             "is_vllm_available": lambda: True}
    for name, value in fakes.items():
        if monkeypatch_or_none is None:
            setattr(vllm_generation, name, value)
        else:
            monkeypatch_or_none.setattr(vllm_generation, name, value, raising=False)
