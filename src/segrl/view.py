"""See the segments of a response under a model: the logic behind ``segrl segment``.

:func:`segment_response` runs one forward pass of the model over prompt + response, reads two per-token signals
(the entropy of the distribution each response token was drawn from, at temperature 1, and the probability of the
token itself at the sampling temperature) and cuts the response with one of the segmenters of
:mod:`segrl.segmentation`. :func:`render_terminal` and :func:`render_html` show the result: one colour per segment,
and in the HTML page each token's signals on hover.

The prompt is wrapped in the model's chat template when it has one (as a single user turn), since that is the
distribution an instruct model samples its responses from. The response is tokenised on its own, without special
tokens, so that character offsets map tokens back to the text (the delimiter segmenter needs them); no EOS is
appended, so the entropy tail rule has nothing to drop.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

import torch
from rich.text import Text
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from segrl import segmentation as seg
from segrl.errors import UserError

# The fields of SegmentParams that each method reads.
METHOD_PARAMS = {
    "entropy": ("threshold",),
    "uncertainty": ("tau_u", "min_len", "max_len"),
    "cutpoint": ("rho", "interval", "temperature"),
    "fixed": ("length",),
    "delimiter": ("delimiter",),
}
METHODS = tuple(METHOD_PARAMS)

# Background colours that alternate from segment to segment (readable with black text).
PALETTE = ("#ffe08a", "#9fd8ff", "#b8f2b0", "#ffb8d9", "#d7c4ff", "#ffd0a8")
TERMINAL_PALETTE = ("on #5f5f00", "on #005f87", "on #005f00", "on #87005f", "on #5f00af", "on #875f00")


@dataclass
class SegmentParams:
    """Parameters of every segmenter; each method reads only its own (see :mod:`segrl.segmentation`)."""

    threshold: float = 2.0
    """entropy: a token opens a segment when its entropy (nats) is > threshold (2.0 for Llama-3 in the paper)."""
    tau_u: float = 3.0
    """uncertainty: entropy at or above which a segment of at least ``min_len`` tokens ends (CARDS)."""
    min_len: int = 4
    """uncertainty: fewest tokens in a segment before it may end."""
    max_len: int = 64
    """uncertainty: most tokens in a segment."""
    rho: float = 0.9
    """cutpoint: a token with probability < rho at the sampling temperature is a cutpoint (SPO)."""
    interval: int = 5
    """cutpoint: keep every interval-th cutpoint as a boundary (SPO's int5)."""
    temperature: float = 1.0
    """cutpoint: the sampling temperature at which token probabilities are read."""
    length: int = 16
    """fixed: tokens per segment."""
    delimiter: str = "sentence"
    """delimiter: "newline", "blank_line" or "sentence"."""


@dataclass
class SegmentedResponse:
    """One response cut into segments, with the per-token signals behind the cut (all lists of length T)."""

    prompt: str
    response: str
    pieces: list[str]
    """The text of each response token (``response[start_t:start_{t+1}]``, so pieces concatenate to the response)."""
    segment_ids: list[int]
    entropy: list[float]
    """Entropy (nats, temperature 1) of the distribution each token was drawn from."""
    prob: list[float]
    """Probability of each token at the sampling temperature."""
    method: str
    settings: str
    """The parameters of ``method`` that shaped the cut, e.g. ``"threshold=4.0"``."""

    @property
    def num_segments(self) -> int:
        return max(self.segment_ids, default=-1) + 1


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, use_chat_template: bool = True) -> str:
    """The text the model conditions on: the chat template around one user turn, or the raw prompt."""
    if use_chat_template and tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


@torch.no_grad()
def generate_response(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    max_new_tokens: int = 96,
    temperature: float = 1.0,
    seed: int = 0,
    use_chat_template: bool = True,
) -> str:
    """Sample one response (or decode greedily when ``temperature == 0``) and return its text."""
    text = format_prompt(tokenizer, prompt, use_chat_template)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    out = model.generate(
        **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
    )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


@torch.no_grad()
def segment_response(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    method: str = "entropy",
    params: SegmentParams | None = None,
    use_chat_template: bool = True,
) -> SegmentedResponse:
    """Cut ``response`` into segments with ``method`` under ``model``; see the module docstring."""
    params = params or SegmentParams()
    if method not in METHOD_PARAMS:
        raise UserError(f"Unknown segmentation method '{method}'; expected one of {', '.join(METHODS)}")
    if not response.strip():
        raise UserError("The response is empty: there is nothing to segment")
    prompt_ids = tokenizer(format_prompt(tokenizer, prompt, use_chat_template), add_special_tokens=False)["input_ids"]
    encoded = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    response_ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if not prompt_ids:  # a causal LM needs at least one token before the first response token
        prompt_ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    total = len(prompt_ids) + len(response_ids)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and total > context:
        raise UserError(
            f"Prompt + response is {total} tokens ({len(prompt_ids)} + {len(response_ids)}), longer than the "
            f"model's context of {context} tokens"
        )

    input_ids = torch.tensor([prompt_ids + response_ids], device=model.device)
    logits = model(input_ids).logits.float()
    # Position t - 1 predicts token t: keep the predictions of the response tokens.
    response_logits = logits[:, len(prompt_ids) - 1 : -1]
    response_tensor = input_ids[:, len(prompt_ids) :]
    entropy = seg.token_entropy(response_logits)
    prob = seg.sampled_token_probs(response_logits, response_tensor, temperature=params.temperature)
    mask = torch.ones_like(response_tensor, dtype=torch.bool)

    if method == "entropy":
        segment_ids = seg.entropy_segments(entropy, mask, params.threshold)
    elif method == "uncertainty":
        segment_ids = seg.uncertainty_segments(entropy, mask, params.tau_u, params.min_len, params.max_len)
    elif method == "cutpoint":
        segment_ids = seg.cutpoint_segments(prob, mask, params.rho, params.interval)
    elif method == "fixed":
        segment_ids = seg.fixed_length_segments(mask, params.length)
    else:
        segment_ids = seg.delimiter_segments([response], torch.tensor([offsets]), mask, params.delimiter)

    starts = [start for start, _ in offsets] + [len(response)]
    starts[0] = 0  # leading text that no token covers (rare) still gets shown, with the first token
    pieces = [response[starts[t] : starts[t + 1]] for t in range(len(offsets))]
    return SegmentedResponse(
        prompt=prompt,
        response=response,
        pieces=pieces,
        segment_ids=segment_ids[0].tolist(),
        entropy=entropy[0].tolist(),
        prob=prob[0].tolist(),
        method=method,
        settings=", ".join(f"{name}={getattr(params, name)}" for name in METHOD_PARAMS[method]),
    )


def summary(result: SegmentedResponse) -> str:
    """One line: tokens, segments and mean segment length."""
    tokens = len(result.pieces)
    return (
        f"{tokens} tokens, {result.num_segments} segments, "
        f"{tokens / max(result.num_segments, 1):.1f} tokens per segment ({result.method}: {result.settings})"
    )


# C0 and C1 controls (newline and tab excepted), and the bidirectional marks, embeddings, overrides and isolates.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with every control character (newline and tab excepted) and bidirectional override shown as its
    escape (``\\x1b``, ``\\u202e``): printed data cannot clear the screen, move the cursor or reorder a line."""
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def render_terminal(result: SegmentedResponse, colour: bool = True) -> Text:
    """The response for a ``rich`` console: alternating background colours per segment, or, without colour, a
    ``|`` between segments; control characters shown as escapes (:func:`visible`)."""
    text = Text()
    for t, (piece, segment) in enumerate(zip(result.pieces, result.segment_ids)):
        piece = visible(piece)
        if colour:
            text.append(piece, style=TERMINAL_PALETTE[segment % len(TERMINAL_PALETTE)] if segment >= 0 else "")
        else:
            opens_segment = t > 0 and segment != result.segment_ids[t - 1]
            text.append(("|" if opens_segment else "") + piece)
    return text


def render_html(results: list[SegmentedResponse], title: str = "segrl segments") -> str:
    """A self-contained HTML page: each segment a coloured span, each token's signals in its hover title."""
    sections = []
    for index, result in enumerate(results):
        spans = []
        for segment in range(result.num_segments):
            tokens = "".join(
                f'<span class="tok" title="token {t}: {html.escape(repr(piece), quote=True)}&#10;'
                f'entropy {result.entropy[t]:.3f} nats&#10;p {result.prob[t]:.3f}">{html.escape(piece)}</span>'
                for t, piece in enumerate(result.pieces)
                if result.segment_ids[t] == segment
            )
            colour = PALETTE[segment % len(PALETTE)]
            spans.append(f'<span class="seg" style="background:{colour}" data-segment="{segment}">{tokens}</span>')
        sections.append(
            f"<section><h2>Response {index + 1}</h2>"
            f'<p class="prompt"><b>Prompt</b>: {html.escape(result.prompt)}</p>'
            f'<p class="summary">{html.escape(summary(result))}</p>'
            f'<div class="response">{"".join(spans)}</div></section>'
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }}
.response {{ font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; font-size: 15px; }}
.seg {{ border-radius: 3px; padding: 2px 0; margin-right: 1px; }}
.tok:hover {{ outline: 2px solid #333; }}
.prompt, .summary {{ color: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Each coloured run is one segment; hover over a token to see its entropy and probability.</p>
{"".join(sections)}
</body></html>
"""
