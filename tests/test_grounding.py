"""The grounding task: deterministic, disjoint splits; unique referents; exact demonstrations; Acc@0.5 and metrics."""

import math
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from segrl.errors import UserError
from segrl.rewards import lens
from segrl.tasks import grounding

COLOURS = {"red", "green", "blue", "yellow", "purple", "orange"}
KINDS = {"rectangle", "circle", "triangle"}


@pytest.fixture(scope="module")
def train_rows():
    return grounding.make_rows("train", 400, seed=5)


# ---------------------------------------------------------------------------------------------------------------
# an independent reading of the prompt text (not the generator's structures)

_HEADER = re.compile(r"Shapes on a (\d+)x(\d+) grid \(x right, y down\):")
_RECT = re.compile(r"(small|large) (\w+) rectangle from \((\d+),(\d+)\) to \((\d+),(\d+)\)")
_CIRCLE = re.compile(r"(small|large) (\w+) circle centre \((\d+),(\d+)\) radius (\d+)")
_TRIANGLE = re.compile(r"(small|large) (\w+) triangle corners \((\d+),(\d+)\) \((\d+),(\d+)\) \((\d+),(\d+)\)")
_QUESTION = re.compile(r"Box of (the .+)\?")


def parse_prompt(prompt):
    assert prompt.endswith("?\n")
    lines = prompt[:-1].split("\n")
    m = _HEADER.fullmatch(lines[0])
    assert m and m.group(1) == m.group(2)
    grid = int(m.group(1))
    shapes = []
    for line in lines[1:-1]:
        if m := _RECT.fullmatch(line):
            x1, y1, x2, y2 = map(int, m.groups()[2:])
            s = {"kind": "rectangle", "box": (x1, y1, x2, y2), "area": (x2 - x1) * (y2 - y1)}
            s["geom"] = f"from ({x1},{y1}) to ({x2},{y2})"
        elif m := _CIRCLE.fullmatch(line):
            cx, cy, r = map(int, m.groups()[2:])
            s = {"kind": "circle", "box": (cx - r, cy - r, cx + r, cy + r), "area": math.pi * r * r}
            s["circle"] = (cx, cy, r)
            s["geom"] = f", centre ({cx},{cy}) radius {r}"
        else:
            m = _TRIANGLE.fullmatch(line)
            assert m, line
            v = list(map(int, m.groups()[2:]))
            pts = [(v[0], v[1]), (v[2], v[3]), (v[4], v[5])]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            area = abs(sum(pts[k][0] * pts[k - 2][1] - pts[k - 2][0] * pts[k][1] for k in range(3))) / 2
            s = {"kind": "triangle", "box": (min(xs), min(ys), max(xs), max(ys)), "area": area, "tri": pts}
            s["geom"] = ", corners " + " ".join(f"({x},{y})" for x, y in pts)
        s["size"], s["colour"] = m.group(1), m.group(2)
        x1, y1, x2, y2 = s["box"]
        s["cx"], s["cy"] = (x1 + x2) / 2, (y1 + y2) / 2
        shapes.append(s)
    q = _QUESTION.fullmatch(lines[-1])
    assert q, lines[-1]
    return grid, shapes, q.group(1)


def _noun_matches(shapes, words):
    """Shapes matching a noun phrase: 'circle', 'shape', 'red shape', 'small circle', 'red circle'."""
    parts = words.split()
    if len(parts) == 1:
        return [s for s in shapes if parts[0] == "shape" or s["kind"] == parts[0]]
    adj, noun = parts
    assert noun in KINDS | {"shape"}
    if adj in ("small", "large"):
        assert noun != "shape"
        return [s for s in shapes if s["size"] == adj and s["kind"] == noun]
    assert adj in COLOURS
    return [s for s in shapes if s["colour"] == adj and noun in ("shape", s["kind"])]


def referents(grid, shapes, expr):
    """Every shape the expression could mean (for superlatives/extremes: every shape within the margin of the best)."""
    assert expr.startswith("the ")
    m = re.fullmatch(r"the (.+) (left of|right of|above|below) the (.+)", expr)
    if m:
        anchors = _noun_matches(shapes, m.group(3))
        assert len(anchors) == 1 and m.group(3).split()[-1] != "shape"
        a = anchors[0]["box"]
        test = {
            "left of": lambda b: b[2] < a[0], "right of": lambda b: b[0] > a[2],
            "above": lambda b: b[3] < a[1], "below": lambda b: b[1] > a[3],
        }[m.group(2)]
        return "relation", [s for s in _noun_matches(shapes, m.group(1)) if test(s["box"])]
    m = re.fullmatch(r"the (largest|smallest) (\w+)", expr)
    if m:
        cands = _noun_matches(shapes, m.group(2))
        assert len(cands) >= 2
        if m.group(1) == "largest":
            top = max(s["area"] for s in cands)
            return "superlative", [s for s in cands if s["area"] * 1.25 > top]
        low = min(s["area"] for s in cands)
        return "superlative", [s for s in cands if s["area"] < low * 1.25]
    m = re.fullmatch(r"the (leftmost|rightmost|topmost|bottommost) (\w+)", expr)
    if m:
        cands = _noun_matches(shapes, m.group(2))
        assert len(cands) >= 2
        key = {"leftmost": lambda s: s["cx"], "rightmost": lambda s: -s["cx"],
               "topmost": lambda s: s["cy"], "bottommost": lambda s: -s["cy"]}[m.group(1)]
        best = min(key(s) for s in cands)
        return "extreme", [s for s in cands if key(s) < best + grid / 16]
    words = expr[4:]
    return ("size" if words.split()[0] in ("small", "large") else "colour"), _noun_matches(shapes, words)


# ---------------------------------------------------------------------------------------------------------------
# data


def test_same_arguments_same_data_and_prefix_property():
    a = grounding.make_rows("train", 30, seed=3)
    assert grounding.make_rows("train", 30, seed=3) == a
    assert grounding.make_rows("train", 12, seed=3) == a[:12]
    assert grounding.make_rows("train", 30, seed=4) != a
    t = grounding.make_rows("test", 20, seed=3, grid=32, num_shapes=5)
    assert grounding.make_rows("test", 7, seed=3, grid=32, num_shapes=5) == t[:7]


def test_dataset_columns_and_types():
    ds = grounding.make_dataset("test", 6, seed=1)
    assert ds.column_names == ["prompt", "completion", "box", "mask", "kind", "question"]
    assert ds.to_list() == grounding.make_rows("test", 6, seed=1)
    row = ds[0]
    assert row["prompt"].startswith("Shapes on a 64x64 grid (x right, y down):\n") and row["prompt"].endswith("?\n")
    assert len(row["box"]) == 4 and all(isinstance(v, int) for v in row["box"])
    assert row["mask"]["size"] == [64, 64] and sum(row["mask"]["counts"]) == 64 * 64
    assert row["kind"] in KINDS and row["question"] in grounding.QUESTIONS


def test_splits_are_disjoint():
    for seed in (0, 1):
        train = {r["prompt"] for r in grounding._text_rows("train", 1000, seed)}
        test = {r["prompt"] for r in grounding._text_rows("test", 250, seed)}
        assert not train & test
        other = {r["prompt"] for r in grounding._text_rows("train", 1000, 1 - seed)}
        assert not other & test  # across seeds too
    small_train = {r["prompt"] for r in grounding._text_rows("train", 600, 2, grid=16, num_shapes=2)}
    small_test = {r["prompt"] for r in grounding._text_rows("test", 150, 2, grid=16, num_shapes=2)}
    assert not small_train & small_test
    # the split is a function of the scene and question, not of the order the shapes are listed in
    for scene, _, expr, _ in grounding.make_scenes("test", 20, seed=0):
        flipped = grounding.Scene(scene.grid, scene.shapes[::-1])
        assert grounding.split_of(scene, expr) == grounding.split_of(flipped, expr) == "test"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shapes": 3}, "unknown difficulty knob"),
        ({"grid": 15}, "grid"),
        ({"grid": 64.0}, "grid"),
        ({"grid": True}, "grid"),
        ({"num_shapes": 1}, "num_shapes"),
        ({"num_shapes": 7}, "num_shapes"),
        ({"num_shapes": "3"}, "num_shapes"),
    ],
)
def test_bad_knobs_raise(kwargs, match):
    with pytest.raises(UserError, match=match):
        grounding.make_rows("train", 2, **kwargs)
    with pytest.raises(UserError, match=match):
        grounding.make_dataset("train", 2, **kwargs)


def test_bad_arguments_raise():
    with pytest.raises(UserError, match="split"):
        grounding.make_rows("val", 2)
    with pytest.raises(UserError, match="num_examples"):
        grounding.make_rows("train", -1)
    with pytest.raises(UserError, match="seed"):
        grounding.make_rows("train", 2, seed="0")
    assert grounding.make_rows("train", 0) == []


@pytest.mark.parametrize("knobs", [{}, {"grid": 16, "num_shapes": 6}, {"grid": 40, "num_shapes": 2}])
def test_scenes_follow_the_geometry_rules(knobs):
    grid = knobs.get("grid", 64)
    lo, hi = max(2, math.ceil(grid / 10)), grid // 3
    for split in ("train", "test"):
        for row in grounding.make_rows(split, 60, seed=9, **knobs):
            g, shapes, _ = parse_prompt(row["prompt"])
            assert g == grid and len(shapes) == knobs.get("num_shapes", 3)
            assert len({(s["colour"], s["kind"]) for s in shapes}) == len(shapes)
            for s in shapes:
                x1, y1, x2, y2 = s["box"]
                assert 0 <= x1 and x2 <= grid and 0 <= y1 and y2 <= grid
                assert lo <= x2 - x1 <= hi and lo <= y2 - y1 <= hi
                assert s["size"] == ("large" if s["area"] >= grid * grid / 32 else "small")
                if s["kind"] == "triangle":
                    assert s["area"] >= (x2 - x1) * (y2 - y1) / 4
            for i, a in enumerate(shapes):  # strictly disjoint boxes
                for b in shapes[i + 1:]:
                    A, B = a["box"], b["box"]
                    assert A[2] < B[0] or B[2] < A[0] or A[3] < B[1] or B[3] < A[1]


def test_every_question_has_exactly_one_referent_and_the_demonstration_names_it(train_rows):
    rows = train_rows + grounding.make_rows("test", 100, seed=5) + grounding.make_rows("train", 100, 5, num_shapes=6)
    seen_questions, seen_kinds = set(), set()
    for row in rows:
        grid, shapes, expr = parse_prompt(row["prompt"])
        qtype, hits = referents(grid, shapes, expr)
        assert len(hits) == 1, (row["prompt"], [h["colour"] for h in hits])
        t = hits[0]
        assert row["question"] == qtype and row["kind"] == t["kind"]
        x1, y1, x2, y2 = t["box"]
        assert row["box"] == [x1, y1, x2, y2]
        geom = " " + t["geom"] if t["kind"] == "rectangle" else t["geom"]
        assert row["completion"] == (
            f"<think>{expr} is the {t['colour']} {t['kind']}{geom}: x {x1} to {x2}, y {y1} to {y2}</think>\n"
            f"<answer>[{x1},{y1},{x2},{y2}]</answer>"
        )
        seen_questions.add(qtype)
        seen_kinds.add(t["kind"])
    assert seen_questions == set(grounding.QUESTIONS) and seen_kinds == KINDS


def test_question_types_are_balanced(train_rows):
    counts = {q: sum(r["question"] == q for r in train_rows) for q in grounding.QUESTIONS}
    assert min(counts.values()) >= 40, counts  # uniform over 5 types: ~80 each of 400


def test_the_worked_example_renders_exactly():
    scene = grounding.Scene(64, (
        grounding.Shape("red", "circle", (12, 40, 5)),
        grounding.Shape("blue", "rectangle", (30, 8, 52, 30)),
        grounding.Shape("green", "triangle", (5, 5, 20, 5, 12, 18)),
    ))
    expr = "the circle left of the blue rectangle"
    assert grounding.render_prompt(scene, expr) == (
        "Shapes on a 64x64 grid (x right, y down):\n"
        "small red circle centre (12,40) radius 5\n"
        "large blue rectangle from (30,8) to (52,30)\n"
        "small green triangle corners (5,5) (20,5) (12,18)\n"
        "Box of the circle left of the blue rectangle?\n"
    )
    assert grounding.render_completion(scene.shapes[0], expr) == (
        "<think>the circle left of the blue rectangle is the red circle, centre (12,40) radius 5: x 7 to 17, "
        "y 35 to 45</think>\n<answer>[7,35,17,45]</answer>"
    )
    assert grounding.render_completion(scene.shapes[1], "the blue rectangle").startswith(
        "<think>the blue rectangle is the blue rectangle from (30,8) to (52,30): x 30 to 52, y 8 to 30</think>"
    )
    assert grounding.render_completion(scene.shapes[2], "the green shape").startswith(
        "<think>the green shape is the green triangle, corners (5,5) (20,5) (12,18): x 5 to 20, y 5 to 18</think>"
    )
    # sizes: area 25*pi = 78.5 < 128 <= 22*22 = 484; the triangle's area is 97.5 < 128
    assert [s.size(64) for s in scene.shapes] == ["small", "large", "small"]
    assert grounding.resolve(scene, ("relation", ("kind", "circle"), "left of", ("name", "blue", "rectangle"))) == [0]


def test_prompt_and_demonstration_stay_short(train_rows):
    rows = grounding._text_rows("train", 1500, seed=0) + grounding._text_rows("test", 200, seed=0)
    longest = max(len(r["prompt"] + r["completion"]) for r in rows + train_rows)
    assert longest < 450


def test_corpus_covers_the_format():
    texts = grounding.corpus(seed=0)
    assert len(texts) == 2001 and texts == grounding.corpus(seed=0)
    joined = "".join(texts)
    for word in ("<think>", "</answer>", "leftmost", "largest", "below", "radius", "corners", "purple", "64x64"):
        assert word in joined


# ---------------------------------------------------------------------------------------------------------------
# masks


def _brute_circle(cx, cy, r, n):
    return [[(i + 0.5 - cx) ** 2 + (j + 0.5 - cy) ** 2 <= r * r for i in range(n)] for j in range(n)]


def _brute_triangle(pts, n):
    def side(p, a, b):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    out = []
    for j in range(n):
        row = []
        for i in range(n):
            p = (i + 0.5, j + 0.5)
            d = [side(p, pts[0], pts[1]), side(p, pts[1], pts[2]), side(p, pts[2], pts[0])]
            row.append(not (min(d) < 0 < max(d)))
        out.append(row)
    return out


def test_hand_masks():
    circle = _brute_circle(10, 10, 2, 20)
    assert sum(map(sum, circle)) == 12  # (+-0.5, +-0.5): 4 pixels, (+-0.5, +-1.5) and swapped: 8
    mask = grounding.shape_mask(grounding.Shape("red", "circle", (10, 10, 2)), 20, 20)
    assert mask.tolist() == circle
    # triangle (0,0) (4,0) (0,4): centres with x + y <= 4 -> 4 + 3 + 2 + 1 = 10 pixels, the diagonal included
    tri = grounding.shape_mask(grounding.Shape("red", "triangle", (0, 0, 4, 0, 0, 4)), 6, 6)
    assert int(tri.sum()) == 10 and tri.tolist() == _brute_triangle([(0, 0), (4, 0), (0, 4)], 6)
    assert bool(tri[3, 0]) and not bool(tri[3, 1])  # (0.5, 3.5) on the hypotenuse is in; (1.5, 3.5) is out
    rect = grounding.Shape("red", "rectangle", (3, 2, 9, 7))
    assert torch.equal(grounding.shape_mask(rect, 12, 10), lens.rasterize_box(rect.box, 12, 10))


def test_generated_masks_match_brute_force_and_round_trip():
    examples = grounding.make_scenes("train", 40, seed=2, grid=24)
    rows = grounding.make_rows("train", 40, seed=2, grid=24)
    checked = set()
    for (scene, _, _, target), row in zip(examples, rows):
        shape = scene.shapes[target]
        decoded = lens.rle_decode(row["mask"])
        mask = grounding.shape_mask(shape, 24, 24)
        assert torch.equal(decoded, mask)
        if shape.kind == "circle":
            assert mask.tolist() == _brute_circle(*shape.coords, 24)
        elif shape.kind == "triangle":
            c = shape.coords
            assert mask.tolist() == _brute_triangle([c[0:2], c[2:4], c[4:6]], 24)
        else:
            assert torch.equal(mask, lens.rasterize_box(row["box"], 24, 24))
        checked.add(shape.kind)
    assert checked == KINDS


# ---------------------------------------------------------------------------------------------------------------
# reward and metrics


def test_demonstrations_score_perfectly(train_rows):
    rows = train_rows
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    cols = {"box": [r["box"] for r in rows], "mask": [r["mask"] for r in rows]}
    assert grounding.reward(prompts, completions, **cols) == [1.0] * len(rows)
    conversational = [[{"role": "assistant", "content": c}] for c in completions]
    assert grounding.reward(prompts, conversational, **cols) == [1.0] * len(rows)
    fmt, box2, mask2 = (fn(prompts, completions, **cols) for fn in grounding.reward_funcs)
    assert fmt == [1.0] * len(rows) and box2 == [1.0] * len(rows)
    expected_mask = []
    for r in rows:
        x1, y1, x2, y2 = r["box"]
        _, shapes, _ = parse_prompt(r["prompt"])
        if r["kind"] == "rectangle":
            expected_mask.append(1.0)
        elif r["kind"] == "circle":
            (t,) = [s for s in shapes if s["kind"] == "circle" and s["box"] == tuple(r["box"])]
            cx, cy, rad = t["circle"]
            disc = sum(map(sum, _brute_circle(cx, cy, rad, 64)))
            expected_mask.append(disc / (2 * rad) ** 2)
        else:
            (t,) = [s for s in shapes if s["kind"] == "triangle" and s["box"] == tuple(r["box"])]
            expected_mask.append(sum(map(sum, _brute_triangle(t["tri"], 64))) / ((x2 - x1) * (y2 - y1)))
    assert mask2 == pytest.approx([m * m for m in expected_mask], abs=1e-12)
    m = grounding.metrics(prompts, completions, **cols)
    assert m["format_rate"] == 1.0 and m["box_iou"] == 1.0 and m["acc_at_0.5"] == 1.0
    assert m["mask_iou"] == pytest.approx(sum(expected_mask) / len(rows), abs=1e-12)
    circles = [e for e, r in zip(expected_mask, rows) if r["kind"] == "circle"]
    triangles = [e for e, r in zip(expected_mask, rows) if r["kind"] == "triangle"]
    assert abs(sum(circles) / len(circles) - math.pi / 4) < 0.05  # ~pi/4 for a disc in its box
    assert 0.4 < sum(triangles) / len(triangles) < 0.65  # ~1/2 for a triangle in its box


def test_hand_circle_metrics():
    mask = lens.rle_encode(grounding.shape_mask(grounding.Shape("red", "circle", (10, 10, 2)), 20, 20))
    demo = "<think>t</think>\n<answer>[8,8,12,12]</answer>"
    m = grounding.metrics(["p"], [demo], box=[[8, 8, 12, 12]], mask=[mask])
    assert m == {"format_rate": 1.0, "box_iou": 1.0, "mask_iou": 0.75, "acc_at_0.5": 1.0}  # 12 / 16


def test_shifted_boxes_and_hand_iou():
    gt = [10, 10, 20, 20]
    mask = lens.rle_encode(grounding.shape_mask(grounding.Shape("red", "rectangle", tuple(gt)), 32, 32))
    # shifted by 5: overlap 5x10 = 50, union 150 -> 1/3; shifted by 2: overlap 80, union 120 -> 2/3
    completions = [
        "<think>a</think>\n<answer>[15,10,25,20]</answer>",
        "<think>b</think><answer>(12,10),(22,20)</answer>",
    ]
    cols = {"box": [gt, gt], "mask": [mask, mask]}
    assert grounding.reward(["p", "p"], completions, **cols) == [0.0, 1.0]
    m = grounding.metrics(["p", "p"], completions, **cols)
    assert m["box_iou"] == pytest.approx(0.5) and m["mask_iou"] == pytest.approx(0.5)
    assert m["acc_at_0.5"] == 0.5 and m["format_rate"] == 1.0
    # IoU exactly 0.5 counts: [10,10,20,20] vs [10,10,20,30] -> 100 / 200
    assert grounding.reward(["p"], ["<answer>[10,10,20,30]</answer>"], box=[gt]) == [1.0]
    # a bare answer block is not the format, but its box still counts
    only_tail = grounding.metrics(["p"], ["<answer>[15,10,25,20]</answer>"], box=[gt], mask=[mask])
    assert only_tail["format_rate"] == 0.0 and only_tail["box_iou"] == pytest.approx(1 / 3)


def test_garbage_scores_zero_and_never_raises():
    gt = [10, 10, 20, 20]
    mask = lens.rle_encode(lens.rasterize_box(gt, 32, 32))
    garbage = [
        "", "hello", None, 42, {"role": "user", "content": "<answer>[10,10,20,20]</answer>"},
        "<answer>[1,2]</answer>", "<answer>[10,10,20,20]</answer><answer>[10,10,20,20]</answer>",
        [{"role": "assistant", "content": "<think>x</think><answer>[nan, inf, 1e999, x]</answer>"}],
        "<think><answer>[10,10,20,20]</think>", "[10,10,20,20]",
    ]
    n = len(garbage)
    assert grounding.reward(["p"] * n, garbage, box=[gt] * n) == [0.0] * n
    m = grounding.metrics(["p"] * n, garbage, box=[gt] * n, mask=[mask] * n)
    # only the conversational one is well formatted (think then answer); its answer does not parse
    assert m == {"format_rate": 0.1, "box_iou": 0.0, "mask_iou": 0.0, "acc_at_0.5": 0.0}


def test_missing_or_bad_columns_are_data_errors():
    with pytest.raises(UserError, match="box"):
        grounding.reward(["p"], ["x"])
    with pytest.raises(UserError, match="box"):
        grounding.reward(["p"], ["x"], box=[[1, 2, 3]])
    with pytest.raises(UserError, match="box"):
        grounding.reward(["p", "p"], ["x", "y"], box=[[1, 2, 3, 4]])
    with pytest.raises(UserError, match="mask"):
        grounding.metrics(["p"], ["x"], box=[[1, 2, 3, 4]])
    # TRL's extra keywords are ignored
    assert grounding.reward(["p"], ["<answer>[1,2,3,4]</answer>"], box=[[1, 2, 3, 4]], trainer_state=None,
                            completion_ids=[[1]]) == [1.0]
