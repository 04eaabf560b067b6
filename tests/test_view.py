"""segment_response: signals aligned with the right tokens, every method, HTML output, and bad input."""

import html
import re

import pytest
import scipy.stats
import torch

from segrl.errors import UserError
from segrl.models import load_model
from segrl.view import METHODS, SegmentParams, format_prompt, render_html, segment_response

RESPONSE = "The soup was hot. The bread was fresh!\nWould we come back? Yes."


@pytest.fixture(scope="module")
def random_model(random_model_dir):
    return load_model(str(random_model_dir), device="cpu")


def test_signals_match_a_token_by_token_recomputation(random_model):
    """Entropy and probability of token t come from the distribution after prompt + response[:t]."""
    model, tokenizer = random_model
    result = segment_response(model, tokenizer, "Review:", RESPONSE, "entropy", SegmentParams(temperature=0.5))
    prompt_ids = tokenizer(format_prompt(tokenizer, "Review:"), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]
    assert len(result.pieces) == len(response_ids)
    for t in (0, 1, len(response_ids) // 2, len(response_ids) - 1):
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + response_ids[:t]])).logits[0, -1].double()
        expected_entropy = scipy.stats.entropy(torch.softmax(logits, -1).numpy())
        expected_prob = torch.softmax(logits / 0.5, -1)[response_ids[t]].item()
        assert result.entropy[t] == pytest.approx(expected_entropy, rel=1e-4)
        assert result.prob[t] == pytest.approx(expected_prob, rel=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_covers_the_response(random_model, method):
    model, tokenizer = random_model
    result = segment_response(model, tokenizer, "Review:", RESPONSE, method)
    assert "".join(result.pieces) == RESPONSE
    ids = result.segment_ids
    assert ids[0] == 0 and all(b - a in (0, 1) for a, b in zip(ids, ids[1:]))


def test_methods_follow_their_parameters(random_model):
    model, tokenizer = random_model
    n = len(tokenizer(RESPONSE, add_special_tokens=False)["input_ids"])
    token_level = segment_response(model, tokenizer, "", RESPONSE, "entropy", SegmentParams(threshold=0.0))
    assert token_level.num_segments == n  # every entropy of a random model is > 0
    bandit = segment_response(model, tokenizer, "", RESPONSE, "entropy", SegmentParams(threshold=1000.0))
    assert bandit.num_segments == 1
    fixed = segment_response(model, tokenizer, "", RESPONSE, "fixed", SegmentParams(length=5))
    assert fixed.num_segments == -(-n // 5)
    sentences = segment_response(model, tokenizer, "", RESPONSE, "delimiter", SegmentParams(delimiter="sentence"))
    texts = ["".join(p for p, s in zip(sentences.pieces, sentences.segment_ids) if s == k) for k in range(sentences.num_segments)]
    # Byte-level BPE carries the space at the start of the next word, so it opens the next sentence.
    assert texts == ["The soup was hot.", " The bread was fresh!\n", "Would we come back?", " Yes."]


def test_bad_input(random_model):
    model, tokenizer = random_model
    with pytest.raises(UserError, match="empty"):
        segment_response(model, tokenizer, "Review:", "  \n", "entropy")
    with pytest.raises(UserError, match="longer than the model's context of 64 tokens"):
        segment_response(model, tokenizer, "Review:", RESPONSE * 10, "entropy")
    with pytest.raises(UserError, match="Unknown segmentation method"):
        segment_response(model, tokenizer, "Review:", RESPONSE, "bogus")


def test_html_page_has_one_span_per_segment_and_escapes_text(random_model):
    model, tokenizer = random_model
    result = segment_response(model, tokenizer, "<b>hi</b>", "The <script>soup</script> was hot.", "fixed", SegmentParams(length=3))
    page = render_html([result])
    assert "<script" not in page and "</script" not in page and "&lt;" in page
    assert len(re.findall(r'class="seg"', page)) == result.num_segments
    assert len(re.findall(r'class="tok"', page)) == len(result.pieces)
    first_title = re.search(r'class="tok" title="([^"]*)"', page).group(1)
    assert f"entropy {result.entropy[0]:.3f} nats" in html.unescape(first_title)


def test_smollm2_splits_real_english_into_phrases(smollm2_cache):
    """On a real instruct model, the entropy rule gives several multi-token segments, sentences split exactly."""
    model, tokenizer = load_model("smollm2-135m", cache_dir=smollm2_cache)
    text = "The pasta was fresh and the sauce was rich. Service was slow, but friendly. We will come back."
    result = segment_response(model, tokenizer, "Review an Italian restaurant.", text, "entropy", SegmentParams(threshold=4.0))
    assert 3 <= result.num_segments < len(result.pieces) / 2
    sentences = segment_response(model, tokenizer, "Review an Italian restaurant.", text, "delimiter")
    assert sentences.num_segments == 3


def test_control_characters_are_shown_as_escapes_in_the_terminal(random_model_dir, tmp_path):
    from typer.testing import CliRunner

    from segrl.cli import app
    from segrl.view import SegmentedResponse, render_terminal, visible

    assert visible("a\x1b[2Jb\x07\r\x00\x7f\x85\u202ec\n\td") == "a\\x1b[2Jb\\x07\\r\\x00\\x7f\\x85\\u202ec\n\td"
    assert visible("plain text, é ü 中文") == "plain text, é ü 中文"
    result = SegmentedResponse(prompt="p", response="ok\x1b[2J done", pieces=["ok", "\x1b[2J", " done"],
                               segment_ids=[0, 0, 1], entropy=[0.0] * 3, prob=[1.0] * 3, method="fixed",
                               settings="length=2")
    for colour in (True, False):
        shown = render_terminal(result, colour=colour).plain
        assert "\x1b" not in shown and "\\x1b[2J" in shown
    prompt = "Review \x1b]0;owned\x07 this:"
    out = CliRunner().invoke(app, ["segment", "--model", str(random_model_dir), "--prompt", prompt, "--response",
                                   "The soup\x1b[31m was hot.", "--method", "fixed", "--length", "3", "--html",
                                   str(tmp_path / "page.html")])
    assert out.exit_code == 0, out.output
    assert "\x1b" not in out.output and "\\x1b]0;owned\\x07" in out.output and "\\x1b[" in out.output
