"""LENS rewards: IoU on hand-computed boxes and masks, parsing of good, malformed and adversarial answers, the
RLE of the ground-truth masks, and cross-checks against pycocotools' independent RLE and IoU code."""

import math

import pytest
import torch

from segrl.errors import UserError
from segrl.rewards import lens
from segrl.rewards.lens import (
    box_iou, box_iou_reward, format_ok, format_reward, mask_iou, mask_iou_reward, parse_box, rasterize_box,
    rle_decode, rle_encode,
)

import pycocotools.mask as mask_utils  # noqa: E402  (the test extra; an independent RLE and IoU)


def iou(a, b) -> float:
    return float(box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))[0])


def answer(body: str) -> str:
    return f"<think>the red circle</think>\n<answer>{body}</answer>"


# ----------------------------------------------------------------------------------------------------------------
# box IoU


@pytest.mark.parametrize("pred, gt, expected", [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),          # overlap 1, union 4 + 4 - 1
    ([0, 0, 4, 4], [2, 0, 6, 4], 8 / 24),         # half-overlapping squares
    ([1, 1, 3, 3], [0, 0, 4, 4], 4 / 16),         # contained
    ([0, 0, 4, 4], [0, 0, 4, 4], 1.0),
    ([0, 0, 2, 2], [2, 0, 4, 2], 0.0),            # touching edges: no area in common
    ([0, 0, 1, 1], [5, 5, 6, 6], 0.0),            # disjoint
    ([0.5, 0.5, 2.5, 1.5], [0, 0, 2, 2], 1.5 / 4.5),  # fractional: overlap 1.5 x 1, union 2 + 4 - 1.5
])
def test_box_iou_hand_computed(pred, gt, expected):
    assert iou(pred, gt) == pytest.approx(expected, abs=1e-12)
    assert iou(gt, pred) == pytest.approx(expected, abs=1e-12)


def test_box_iou_zero_area_and_zero_union():
    assert iou([1, 1, 1, 3], [0, 0, 4, 4]) == 0.0      # a zero-width prediction
    assert iou([2, 2, 2, 2], [2, 2, 2, 2]) == 0.0      # zero union: 0, not NaN (the release divided by zero)
    assert iou([0, 0, 0, 5], [0, 0, 5, 0]) == 0.0
    # inverted corners given straight to box_iou are an empty box; parse_box sorts them first
    assert iou([3, 3, 1, 1], [1, 1, 3, 3]) == 0.0
    assert parse_box(answer("[3,3,1,1]")) == (1.0, 1.0, 3.0, 3.0)
    assert parse_box(answer("(1,3),(3,1)")) == (1.0, 1.0, 3.0, 3.0)


def test_box_iou_is_batched_row_by_row():
    pred = torch.tensor([[0, 0, 2, 2], [0, 0, 4, 4], [1, 1, 1, 1]])
    gt = torch.tensor([[1, 1, 3, 3], [2, 0, 6, 4], [1, 1, 1, 1]])
    assert box_iou(pred, gt).tolist() == pytest.approx([1 / 7, 1 / 3, 0.0])


def test_box_iou_matches_pycocotools():
    generator = torch.Generator().manual_seed(0)
    corners = torch.randint(0, 50, (200, 4), generator=generator).double()
    boxes = torch.stack([corners[:, [0, 2]].min(1).values, corners[:, [1, 3]].min(1).values,
                         corners[:, [0, 2]].max(1).values, corners[:, [1, 3]].max(1).values], dim=1)
    pred, gt = boxes[:100], boxes[100:]
    xywh = lambda b: torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], dim=1).numpy()  # noqa: E731
    coco = mask_utils.iou(xywh(pred), xywh(gt), [0] * 100)  # (100, 100), all pairs
    ours = box_iou(pred, gt)
    for i in range(100):
        expected = coco[i, i] if (pred[i, 2:] > pred[i, :2]).all() and (gt[i, 2:] > gt[i, :2]).all() else 0.0
        assert ours[i].item() == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# masks


def test_rasterize_box_hand_computed():
    mask = rasterize_box((7, 35, 17, 45), 64, 64)
    assert mask.shape == (64, 64) and mask.sum() == 100
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (35, 44, 7, 16)
    # fractional corners: pixel centres 0.5 and 1.5 lie in [0.4, 1.6], row centre 0.5 in [0, 1]
    assert torch.nonzero(rasterize_box((0.4, 0, 1.6, 1), 3, 3)).tolist() == [[0, 0], [0, 1]]
    # out of the canvas: clipped to the grid
    assert rasterize_box((-10, -10, 74, 74), 64, 64).all()
    assert not rasterize_box((70, 70, 80, 80), 64, 64).any()


def test_mask_iou_hand_computed_and_empty_union():
    a = rasterize_box((0, 0, 4, 4), 8, 8)
    b = rasterize_box((2, 0, 6, 4), 8, 8)
    empty = torch.zeros(8, 8, dtype=torch.bool)
    result = mask_iou(torch.stack([a, a, empty]), torch.stack([b, a, empty]))
    assert result.tolist() == [8 / 24, 1.0, 0.0]


def test_rectangles_box_iou_equals_mask_iou_on_integer_boxes():
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        c = torch.randint(0, 32, (2, 4), generator=generator)
        p, g = ([min(r[0], r[2]), min(r[1], r[3]), max(r[0], r[2]) + 1, max(r[1], r[3]) + 1] for r in c.tolist())
        m = mask_iou(rasterize_box(p, 33, 33)[None], rasterize_box(g, 33, 33)[None])[0]
        assert m.item() == pytest.approx(iou(p, g), abs=1e-12)


def test_rle_hand_example_and_round_trip():
    mask = torch.tensor([[0, 1, 0], [1, 1, 0]], dtype=torch.bool)  # column-major: 0 1 | 1 1 | 0 0
    assert rle_encode(mask) == {"size": [2, 3], "counts": [1, 3, 2]}
    assert rle_encode(torch.ones(2, 2, dtype=torch.bool)) == {"size": [2, 2], "counts": [0, 4]}
    assert rle_encode(torch.zeros(2, 2, dtype=torch.bool)) == {"size": [2, 2], "counts": [4]}
    generator = torch.Generator().manual_seed(2)
    for _ in range(20):
        m = torch.rand(7, 11, generator=generator) < 0.4
        assert torch.equal(rle_decode(rle_encode(m)), m)


def test_rle_and_mask_iou_match_pycocotools():
    import numpy as np

    generator = torch.Generator().manual_seed(3)
    masks = [torch.rand(13, 9, generator=generator) < p for p in (0.1, 0.5, 0.9)]
    masks.append(rasterize_box((2, 3, 7, 11), 13, 9))
    ours = [rle_encode(m) for m in masks]
    coco = [mask_utils.frPyObjects(r, *r["size"]) for r in ours]  # pycocotools reads our uncompressed RLE
    for m, c in zip(masks, coco):
        assert np.array_equal(mask_utils.decode(c).astype(bool), m.numpy())
        assert c["counts"] == mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))["counts"]
    expected = mask_utils.iou(coco, coco[::-1], [0] * 4)
    got = mask_iou(torch.stack(masks), torch.stack(masks[::-1]))
    assert got.tolist() == pytest.approx([expected[i, i] for i in range(4)], abs=1e-12)


@pytest.mark.parametrize("rle", [
    None, [1, 2], {"size": [2, 2]}, {"size": [2, 2], "counts": [1, 2]},   # counts do not sum to H*W
    {"size": [0, 2], "counts": []}, {"size": [2, 2], "counts": [5, -1]}, {"size": [2, 2], "counts": [2.0, 2]},
    {"size": ["2", 2], "counts": [4]}, {"size": [True, 4], "counts": [4]},
])
def test_rle_decode_rejects_malformed(rle):
    with pytest.raises(UserError, match="mask"):
        rle_decode(rle)


# ----------------------------------------------------------------------------------------------------------------
# format and parsing


@pytest.mark.parametrize("text", [
    "<think>the red circle</think><answer>[1,2,3,4]</answer>",
    "  <think>line one\nline two</think>\n\n<answer>\n[1, 2, 3, 4]\n</answer>\n",
    "<think></think><answer></answer>",  # the format level does not look inside the blocks
])
def test_format_accepts(text):
    assert format_ok(text)
    assert format_reward(["p"], [text]) == [1.0]


@pytest.mark.parametrize("text", [
    "",
    "[1,2,3,4]",
    "<answer>[1,2,3,4]</answer>",                                      # no think block
    "<answer>[1,2,3,4]</answer><think>x</think>",                      # wrong order
    "so: <think>x</think><answer>[1,2,3,4]</answer>",                  # text before
    "<think>x</think><answer>[1,2,3,4]</answer> done",                 # text after
    "<think>x</think> and <answer>[1,2,3,4]</answer>",                 # text between
    "<think>x</think>|<answer>y</answer>",                             # the release's unescaped | matched this
    "<think><think>x</think></think><answer>[1,2,3,4]</answer>",       # nested think
    "<think>x</think><answer><answer>[1,2,3,4]</answer></answer>",     # nested answer
    "<think>x</think><answer>[1,2,3,4]</answer><answer>[5,6,7,8]</answer>",  # two answers
    "<think>x<answer>[0,0,9,9]</answer></think><answer>[1,2,3,4]</answer>",  # answer hidden in the think
    "<think>x</think><answer>[1,2,3,4]",                               # unclosed
    "<THINK>x</THINK><ANSWER>[1,2,3,4]</ANSWER>",                      # tags are case-sensitive
])
def test_format_rejects(text):
    assert not format_ok(text)
    assert format_reward(["p"], [text]) == [0.0]


@pytest.mark.parametrize("body, expected", [
    ("[7,35,17,45]", (7, 35, 17, 45)),
    ("(7, 35, 17, 45)", (7, 35, 17, 45)),
    ("(7,35),(17,45)", (7, 35, 17, 45)),
    ("the box is [7.5, 35, 17.25, 45.0].", (7.5, 35, 17.25, 45)),
    ("x1=7 y1=35 x2=17 y2=45", (7, 35, 17, 45)),         # x1 is a name, not the number 1
    ("[17,45,7,35]", (7, 35, 17, 45)),                   # inverted corners are sorted
    ("[-3,+2,5,6]", (-3, 2, 5, 6)),
    ("[1,2,3,4] [50,50,60,60]", (1, 2, 3, 4)),           # the first four numbers, as in LENS
    ("[1,2,3,9999999999999999]", (1, 2, 3, 9999999999999999)),  # 16 characters: still a number
])
def test_parse_box_forms(body, expected):
    assert parse_box(answer(body)) == tuple(float(v) for v in expected)


@pytest.mark.parametrize("text", [
    answer("[1,2,3]"),                                   # three numbers
    answer("no box"),
    answer("[1,2,3,99999999999999999999]"),              # a 20-digit number is not a coordinate
    answer("[1e5,2e5,3e5,4e5]"),                         # exponents are not numbers here
    answer("[١,٢,٣,٤]"),                                 # non-ASCII digits
    answer("[1" + "0" * 5000 + ",2,3,4]"),               # a huge number
    "<think>x</think><answer>[1,2,3,4]</answer><answer>[1,2,3,4]</answer>",
    "<think>x</think><answer><answer>[1,2,3,4]</answer></answer>",
    "<think>x</think><answer>[1,2,3,4]",
    "[1,2,3,4]",
    "",
])
def test_parse_box_rejects(text):
    assert parse_box(text) is None


def test_code_in_an_answer_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    assert parse_box(answer(code)) is None
    assert parse_box(answer(f"[1,2,3,4] if {code} else 0")) == (1.0, 2.0, 3.0, 4.0)
    box_iou_reward(["p"] * 2, [answer(code), answer(f"[{code}, 1, 2, 3, 4]")], box=[[0, 0, 4, 4]] * 2)
    mask_iou_reward(["p"], [answer(code)], mask=[rle_encode(torch.ones(4, 4, dtype=torch.bool))])
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------------
# TRL reward functions


def test_reward_functions_hand_computed():
    completions = [
        answer("[0,0,4,4]"),                             # exact box
        answer("[2,0,6,4]"),                             # IoU 1/3
        answer("[-4,-4,8,8]"),                           # out of range: box IoU 16/144, clipped mask 16/64
        "garbage",
        [{"role": "assistant", "content": answer("[0,0,4,4]")}],  # conversational
    ]
    n = len(completions)
    gt_box = [[0, 0, 4, 4]] * n
    gt_mask = [rle_encode(rasterize_box((0, 0, 4, 4), 8, 8))] * n
    assert format_reward(["p"] * n, completions) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert box_iou_reward(["p"] * n, completions, box=gt_box) == pytest.approx(
        [1.0, 1 / 9, (16 / 144) ** 2, 0.0, 1.0])
    assert mask_iou_reward(["p"] * n, completions, mask=gt_mask) == pytest.approx(
        [1.0, 1 / 9, (16 / 64) ** 2, 0.0, 1.0])


def test_mask_reward_of_a_disc_differs_from_box_reward():
    # the exact bounding box of a disc of radius 3 centred at (4, 4) covers the 6 x 6 pixels of rows and columns
    # 1..6; of their centres, all but the four corners (distance² 12.5 > 9) lie in the disc: 32 of 36
    ys, xs = torch.meshgrid(torch.arange(8) + 0.5, torch.arange(8) + 0.5, indexing="ij")
    disc = (xs - 4) ** 2 + (ys - 4) ** 2 <= 9
    assert int(disc.sum()) == 32 and int(disc[1:7, 1:7].sum()) == 32
    completion = [answer("[1,1,7,7]")]
    assert box_iou_reward(["p"], completion, box=[[1, 1, 7, 7]]) == [1.0]
    assert mask_iou_reward(["p"], completion, mask=[rle_encode(disc)]) == pytest.approx([(32 / 36) ** 2])
    # a box one pixel smaller on each side holds 16 disc pixels: IoU 16 / 32
    assert mask_iou_reward(["p"], [answer("[2,2,6,6]")], mask=[rle_encode(disc)]) == pytest.approx([(16 / 32) ** 2])


def test_reward_functions_missing_and_malformed_ground_truth():
    completion = [answer("[0,0,4,4]")]
    assert box_iou_reward(["p"], completion, box=[None]) == [None]
    assert mask_iou_reward(["p"], completion, mask=[None]) == [None]
    for bad in ([0, 0, 4], [0, 0, 4, math.nan], ["0", 0, 4, 4], "0,0,4,4"):
        with pytest.raises(UserError, match="box"):
            box_iou_reward(["p"], completion, box=[bad])
    with pytest.raises(UserError, match="mask"):
        mask_iou_reward(["p"], ["garbage"], mask=[{"size": [4, 4], "counts": [3]}])


def test_reward_functions_take_trl_keywords_and_are_named_for_logging():
    kwargs = {"completion_ids": [[1, 2]], "trainer_state": None, "kind": ["circle"]}
    assert format_reward(["p"], [answer("[0,0,1,1]")], **kwargs) == [1.0]
    assert box_iou_reward(["p"], [answer("[0,0,1,1]")], box=[[0, 0, 1, 1]], **kwargs) == [1.0]
    assert [f.__name__ for f in lens.REWARD_FUNCS] == ["format_reward", "box_iou_reward", "mask_iou_reward"]
