"""A scripted causal LM and a character tokenizer for decoding tests.

:class:`ScriptedLM` keeps the *token ids* themselves in a real ``DynamicCache`` (as one-dimensional "keys"), so at
every forward pass it sees exactly the tokens that the attention mask leaves visible to each row, and its next-token
logits are a Python function of that visible sequence. A bookkeeping error in the batch's cache (a dropped column
still visible, a kept one hidden, a row mixed with another) changes what it sees, hence its output.
"""

from types import SimpleNamespace

import torch
from transformers.cache_utils import DynamicCache

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?;:"
EOS, PAD = 0, 1  # ids 0 and 1 are special; character i is id i + 2


class CharTokenizer:
    eos_token_id, pad_token_id = EOS, PAD
    eos_token, pad_token = "<eos>", "<pad>"

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ALPHABET.index(c) + 2 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(ALPHABET[i - 2] for i in ids if i >= 2 or not skip_special_tokens)

    def get_vocab(self):
        return {c: i + 2 for i, c in enumerate(ALPHABET)} | {"<eos>": EOS, "<pad>": PAD}


def char_id(c: str) -> int:
    return ALPHABET.index(c) + 2


VOCAB = len(ALPHABET) + 2


class ScriptedLM(torch.nn.Module):
    """``rule(visible_ids: list[int]) -> (V,) logits``; records every visible sequence it was asked about."""

    def __init__(self, rule, max_positions: int = 4096):
        super().__init__()
        self.rule = rule
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so that next(model.parameters()) gives a device
        self.config = SimpleNamespace(max_position_embeddings=max_positions)
        self.generation_config = SimpleNamespace(eos_token_id=EOS)
        self.seen: list[list[int]] = []

    def forward(self, input_ids, attention_mask, position_ids=None, cache=None, use_cache=True):
        cache = cache if cache is not None else DynamicCache()
        keys, _ = cache.update(input_ids.float()[:, None, :, None], input_ids.float()[:, None, :, None], 0)
        tokens = keys[:, 0, :, 0].long()
        width, new = tokens.shape[1], input_ids.shape[1]
        logits = torch.zeros(input_ids.shape[0], new, VOCAB)
        for b in range(input_ids.shape[0]):
            for s in range(new):
                end = width - new + s + 1
                visible = tokens[b, :end][attention_mask[b, :end].bool()].tolist()
                if attention_mask[b, end - 1]:  # only real queries are recorded and scripted
                    self.seen.append(visible)
                    logits[b, s] = torch.as_tensor(self.rule(visible), dtype=torch.float)
        return SimpleNamespace(logits=logits, cache=cache)


def peaked(token: int, margin: float = 30.0) -> torch.Tensor:
    """Logits with all the mass on ``token`` (entropy ~ 0)."""
    logits = torch.zeros(VOCAB)
    logits[token] = margin
    return logits


def uncertain(token: int) -> torch.Tensor:
    """Logits whose argmax is ``token`` but whose entropy is about 4 nats (>= CARDS' tau_u = 3)."""
    logits = torch.zeros(VOCAB)
    logits[token] = 2.0
    return logits
