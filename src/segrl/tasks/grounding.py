"""``grounding``: textual referring-expression grounding, the text stand-in for LENS (arXiv 2508.14153).

A prompt describes a few coloured shapes on a square grid by their coordinates and asks for the bounding box of
one of them, named by a referring expression ("the circle left of the blue rectangle"). The model thinks, then
answers a box ``[x1,y1,x2,y2]``. The ground truth holds the target's exact box *and* its pixel mask, so the three
levels of LENS's reward (``shared/specs/lens.md``) all have something to measure: the sentence level (the
think/answer format), the box level (IoU with the box) and the mask level. There is no mask decoder here: the mask
level scores the *rasterised predicted box* against the shape's mask, so even the exact box of a circle scores
about pi/4 and that of a triangle about 1/2 there, while a rectangle's exact box scores 1 at both levels.

Format
------
prompt (a header line, one line per shape in drawing order, the question; every line ends with ``\\n``)::

    Shapes on a 64x64 grid (x right, y down):
    small red circle centre (12,40) radius 5
    large blue rectangle from (30,8) to (52,30)
    small green triangle corners (5,5) (20,5) (12,18)
    Box of the circle left of the blue rectangle?

completion (the demonstration: one think block, a newline, one answer block; no trailing newline)::

    <think>the circle left of the blue rectangle is the red circle, centre (12,40) radius 5: x 7 to 17, y 35 to 45</think>
    <answer>[7,35,17,45]</answer>

The think block restates the referring expression, names the target by colour and kind (unique in every scene),
repeats its geometry as in the prompt (after a comma for circles and triangles; a rectangle reads ``is the blue
rectangle from (30,8) to (52,30): ...``) and spells out its box; the answer is the box with no spaces.

Geometry
--------
A continuous plane, x to the right and y **down**, canvas ``[0, grid] x [0, grid]``; every number in the text is
an integer.

- rectangle: corners ``(x1,y1)`` to ``(x2,y2)`` (x1 < x2, y1 < y2); its box is exactly that;
- circle: centre ``(cx,cy)`` and radius ``r``; box ``(cx-r, cy-r, cx+r, cy+r)``, always inside the canvas;
- triangle: three vertices; box = min/max of the vertices. Two vertices lie on the left and right sides of the box
  and two on the top and bottom (so the box is tight by construction), and the area is at least a quarter of the
  box's (:data:`MIN_TRIANGLE_FILL`), so no triangle is a sliver.

Each side of a box (width, height, circle diameter) is between ``ceil(grid/10)`` (at least 2) and ``grid // 3``
(7 and 21 at the default grid). The boxes of a scene are pairwise **strictly** disjoint (separated along x or y,
not even touching); a shape that would overlap is redrawn. No two shapes share both colour and kind. Colours:
red, green, blue, yellow, purple, orange.

Size word: a shape is ``large`` when its area (rectangle w*h, circle pi*r^2, triangle by the shoelace formula) is
at least ``grid^2 / 32`` (:data:`LARGE_AREA_FRACTION`; 128 at the default grid), else ``small``: a function of the
shape and its canvas only, printed on the shape's line.

Mask: pixel (row j, column i) of the ``grid x grid`` mask is in the shape when its centre ``(i+0.5, j+0.5)`` lies
in the closed shape (:func:`shape_mask`, exact integer arithmetic). For rectangles this is
:func:`segrl.rewards.lens.rasterize_box` of the box.

Referring expressions
---------------------
The question is ``Box of <expr>?``. Grammar (``<kind>`` is rectangle/circle/triangle, ``<size>`` small/large)::

    expr     := "the" colour-ref | "the" size-ref | "the" superlative | "the" extreme | "the" relation
    colour-ref   := <colour> <kind>             (question "colour"; unique by construction)
                  | <colour> "shape"            (question "colour"; that colour is unique in the scene)
    size-ref     := <size> <kind>               (question "size"; the only <kind> of that size)
    superlative  := ("largest" | "smallest") (<kind> | "shape")                  (question "superlative")
    extreme      := ("leftmost" | "rightmost" | "topmost" | "bottommost") (<kind> | "shape")
                                                                                   (question "extreme")
    relation     := desc ("left of" | "right of" | "above" | "below") "the" anchor  (question "relation")
    desc         := <kind> | <colour> "shape" | <size> <kind>
    anchor       := <colour> <kind> | <size> <kind>   (the anchor description is unique in the scene)

- superlatives compare areas among the shapes the noun covers (at least two); the winner's area must beat the
  runner-up by the factor :data:`AREA_MARGIN` (1.25), so there is no near tie;
- extremes compare box centres (x for left/right, y for top/bottom; y grows downwards, so "topmost" is the
  smallest y) among at least two shapes; the winner must lead the runner-up by at least ``grid/16``
  (:data:`POSITION_MARGIN_FRACTION`);
- relations hold strictly on the boxes: A left of B iff A.x2 < B.x1; right of iff A.x1 > B.x2; above iff
  A.y2 < B.y1; below iff A.y1 > B.y2; exactly one shape matching ``desc`` may satisfy it. When some relation
  expressions of a scene need the relation (``desc`` alone matches two or more shapes), one of those is chosen.

Every question has exactly one referent (:func:`resolve` finds all referents of a structured expression;
:func:`candidate_expressions` lists a scene's valid ones; :func:`make_scenes` gives the structured scene, question
type, expression and target behind each row). A row draws the question type uniformly from the five, then a
scene that admits a question of that type, then the expression uniformly among the valid ones.

Difficulty knobs (keyword arguments of :func:`make_dataset`; defaults in :data:`DEFAULT_DIFFICULTY`)
---------------------------------------------------------------------------------------------------
- ``grid`` (64): the canvas side (an integer >= 16); the mask is ``grid x grid``.
- ``num_shapes`` (3): shapes per scene, 2..6.

Columns: ``prompt``, ``completion``, ``box`` (list of 4 ints, the target's box), ``mask`` (the target's mask as
COCO uncompressed RLE, :func:`segrl.rewards.lens.rle_encode`: ``{"size": [H, W], "counts": [...]}``), ``kind``
(the target's kind) and ``question`` (the expression type: ``colour``, ``size``, ``superlative``, ``extreme``,
``relation``), for per-type analysis.

Splits: a row belongs to ``test`` when a CRC32 of its canonical key (grid, the shapes' specifications sorted, and
the question; :func:`split_of`) falls in 1 of 10 buckets, to ``train`` otherwise, so the splits are disjoint for
every seed and size (the same scene listed in another order lands in the same split). Each split draws from its
own random stream (``random.Random("grounding/<split>/<seed>")``), so the data are reproducible across machines
and a smaller ``num_examples`` gives a prefix of a larger one.

Reward and metrics
------------------
:func:`reward` is the task's accuracy, for held-out evaluation: 1.0 when the box parsed from the completion's
answer block (:func:`segrl.rewards.lens.parse_box`) has IoU >= 0.5 with ``box`` (REC Acc@0.5), else 0.0; it never
raises on a completion. :data:`reward_funcs` are LENS's training rewards (format, box IoU squared, mask IoU
squared; :data:`segrl.rewards.lens.REWARD_FUNCS`), summed by GRPO. :func:`metrics` gives batch means of
``format_rate``, plain ``box_iou`` and ``mask_iou`` (0 for an unparsed answer) and ``acc_at_0.5``.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Any

import torch

from segrl.errors import UserError
from segrl.rewards import lens
from segrl.tasks import check_call, need_int, with_defaults

#: Default difficulty (see the module docstring for what each knob does).
DEFAULT_DIFFICULTY: dict[str, Any] = {"grid": 64, "num_shapes": 3}

SPLITS = ("train", "test")
#: A row is in the test split when crc32(canonical key) % TEST_BUCKETS == 0.
TEST_BUCKETS = 10
MAX_SHAPES = 6

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
KINDS = ("rectangle", "circle", "triangle")
QUESTIONS = ("colour", "size", "superlative", "extreme", "relation")
RELATIONS = ("left of", "right of", "above", "below")
EXTREMES = ("leftmost", "rightmost", "topmost", "bottommost")
SUPERLATIVES = ("largest", "smallest")

#: A shape is "large" when area >= LARGE_AREA_FRACTION * grid**2 (128 at grid 64).
LARGE_AREA_FRACTION = 1 / 32
#: A superlative's winner beats the runner-up's area by at least this factor.
AREA_MARGIN = 1.25
#: An extreme's winner leads the runner-up's box centre by at least this fraction of the grid.
POSITION_MARGIN_FRACTION = 1 / 16
#: A triangle's area is at least this fraction of its box's area.
MIN_TRIANGLE_FILL = 0.25

#: The task's training rewards (LENS's three levels, summed by GRPO).
reward_funcs = lens.REWARD_FUNCS


# ----------------------------------------------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class Shape:
    """One shape: ``coords`` is ``(x1, y1, x2, y2)`` for a rectangle, ``(cx, cy, r)`` for a circle and
    ``(x1, y1, x2, y2, x3, y3)`` (the vertices) for a triangle."""

    colour: str
    kind: str
    coords: tuple[int, ...]

    @property
    def box(self) -> tuple[int, int, int, int]:
        c = self.coords
        if self.kind == "rectangle":
            return (c[0], c[1], c[2], c[3])
        if self.kind == "circle":
            return (c[0] - c[2], c[1] - c[2], c[0] + c[2], c[1] + c[2])
        xs, ys = c[0::2], c[1::2]
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def area(self) -> float:
        c = self.coords
        if self.kind == "rectangle":
            return float((c[2] - c[0]) * (c[3] - c[1]))
        if self.kind == "circle":
            return math.pi * c[2] ** 2
        return abs((c[2] - c[0]) * (c[5] - c[1]) - (c[4] - c[0]) * (c[3] - c[1])) / 2

    @property
    def centre(self) -> tuple[float, float]:
        """The centre of the box."""
        x1, y1, x2, y2 = self.box
        return ((x1 + x2) / 2, (y1 + y2) / 2)

    def size(self, grid: int) -> str:
        """``"large"`` when the area is at least ``LARGE_AREA_FRACTION * grid**2``, else ``"small"``."""
        return "large" if self.area >= LARGE_AREA_FRACTION * grid * grid else "small"

    def geometry(self) -> str:
        """The geometry as the prompt writes it (``centre (12,40) radius 5``)."""
        c = self.coords
        if self.kind == "rectangle":
            return f"from ({c[0]},{c[1]}) to ({c[2]},{c[3]})"
        if self.kind == "circle":
            return f"centre ({c[0]},{c[1]}) radius {c[2]}"
        return f"corners ({c[0]},{c[1]}) ({c[2]},{c[3]}) ({c[4]},{c[5]})"

    def line(self, grid: int) -> str:
        """The shape's prompt line (no newline)."""
        return f"{self.size(grid)} {self.colour} {self.kind} {self.geometry()}"

    def key(self) -> str:
        return f"{self.colour} {self.kind} " + ",".join(map(str, self.coords))


@dataclass(frozen=True)
class Scene:
    """A canvas side and its shapes, in prompt order."""

    grid: int
    shapes: tuple[Shape, ...]


def shape_mask(shape: Shape, height: int, width: int) -> torch.Tensor:
    """Bool ``(height, width)`` mask: pixel (row j, column i) is in when its centre ``(i+0.5, j+0.5)`` lies in the
    closed shape. Computed in integers on doubled coordinates, so points on the boundary count exactly."""
    px = (2 * torch.arange(width, dtype=torch.int64) + 1).view(1, width)  # 2 * (i + 0.5)
    py = (2 * torch.arange(height, dtype=torch.int64) + 1).view(height, 1)
    c = [2 * v for v in shape.coords]
    if shape.kind == "rectangle":
        return (px >= c[0]) & (px <= c[2]) & (py >= c[1]) & (py <= c[3])
    if shape.kind == "circle":
        return (px - c[0]) ** 2 + (py - c[1]) ** 2 <= c[2] ** 2
    if shape.kind == "triangle":
        v = [(c[0], c[1]), (c[2], c[3]), (c[4], c[5])]
        edges = [(bx - ax) * (py - ay) - (by - ay) * (px - ax) for (ax, ay), (bx, by) in zip(v, v[1:] + v[:1])]
        nonneg = (edges[0] >= 0) & (edges[1] >= 0) & (edges[2] >= 0)
        nonpos = (edges[0] <= 0) & (edges[1] <= 0) & (edges[2] <= 0)
        return nonneg | nonpos
    raise ValueError(f"unknown shape kind {shape.kind!r}")


def _extent_range(grid: int) -> tuple[int, int]:
    lo = max(2, math.ceil(grid / 10))
    return lo, max(lo, grid // 3)


def _draw_shape(rng: random.Random, colour: str, kind: str, grid: int) -> Shape:
    lo, hi = _extent_range(grid)
    if kind == "rectangle":
        w, h = rng.randint(lo, hi), rng.randint(lo, hi)
        x, y = rng.randint(0, grid - w), rng.randint(0, grid - h)
        return Shape(colour, kind, (x, y, x + w, y + h))
    if kind == "circle":
        r = rng.randint(math.ceil(lo / 2), max(math.ceil(lo / 2), hi // 2))
        return Shape(colour, kind, (rng.randint(r, grid - r), rng.randint(r, grid - r), r))
    while True:
        w, h = rng.randint(lo, hi), rng.randint(lo, hi)
        x, y = rng.randint(0, grid - w), rng.randint(0, grid - h)
        xs = [x, x + w, rng.randint(x, x + w)]
        ys = [y, y + h, rng.randint(y, y + h)]
        rng.shuffle(xs)
        rng.shuffle(ys)
        shape = Shape(colour, kind, (xs[0], ys[0], xs[1], ys[1], xs[2], ys[2]))
        if shape.area >= MIN_TRIANGLE_FILL * w * h:
            return shape


def _disjoint(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def make_scene(rng: random.Random, grid: int, num_shapes: int) -> Scene | None:
    """Draw one scene (see the module docstring), or None when the shapes could not be placed disjointly."""
    pairs = rng.sample([(c, k) for c in COLOURS for k in KINDS], num_shapes)
    shapes: list[Shape] = []
    for colour, kind in pairs:
        for _ in range(50):
            shape = _draw_shape(rng, colour, kind, grid)
            if all(_disjoint(shape.box, s.box) for s in shapes):
                shapes.append(shape)
                break
        else:
            return None
    return Scene(grid, tuple(shapes))


# ----------------------------------------------------------------------------------------------------------------
# referring expressions
#
# A description is a tuple: ("any",), ("kind", k), ("colour", c), ("size", s, k), ("name", c, k).
# An expression is (question, text, spec) with spec one of ("desc", d), ("superlative", word, d),
# ("extreme", word, d), ("relation", d, rel, anchor_d).


def _desc_text(d: tuple) -> str:
    if d[0] == "any":
        return "shape"
    if d[0] == "kind":
        return d[1]
    if d[0] == "colour":
        return f"{d[1]} shape"
    return f"{d[1]} {d[2]}"


def _matches(scene: Scene, d: tuple) -> list[int]:
    g = scene.grid
    out = []
    for i, s in enumerate(scene.shapes):
        if (
            d[0] == "any"
            or (d[0] == "kind" and s.kind == d[1])
            or (d[0] == "colour" and s.colour == d[1])
            or (d[0] == "size" and s.size(g) == d[1] and s.kind == d[2])
            or (d[0] == "name" and s.colour == d[1] and s.kind == d[2])
        ):
            out.append(i)
    return out


def _relation_holds(a: Shape, rel: str, b: Shape) -> bool:
    ax1, ay1, ax2, ay2 = a.box
    bx1, by1, bx2, by2 = b.box
    return {
        "left of": ax2 < bx1,
        "right of": ax1 > bx2,
        "above": ay2 < by1,
        "below": ay1 > by2,
    }[rel]


def _extreme_value(shape: Shape, word: str) -> float:
    """A value the extreme's winner minimises."""
    cx, cy = shape.centre
    return {"leftmost": cx, "rightmost": -cx, "topmost": cy, "bottommost": -cy}[word]


def resolve(scene: Scene, spec: tuple) -> list[int]:
    """The indices of the shapes ``spec`` refers to (a superlative or extreme without a clear winner refers to
    nothing; a relation whose anchor is not unique refers to nothing)."""
    if spec[0] == "desc":
        return _matches(scene, spec[1])
    if spec[0] in ("superlative", "extreme"):
        cands = _matches(scene, spec[2])
        if len(cands) < 2:
            return []
        if spec[0] == "superlative":
            # ascending by the value to minimise: minus the area for "largest", the area for "smallest"
            vals = sorted(((-1 if spec[1] == "largest" else 1) * scene.shapes[i].area, i) for i in cands)
            best, second = abs(vals[0][0]), abs(vals[1][0])
            ok = best >= AREA_MARGIN * second if spec[1] == "largest" else second >= AREA_MARGIN * best
        else:
            vals = sorted((_extreme_value(scene.shapes[i], spec[1]), i) for i in cands)
            ok = vals[1][0] - vals[0][0] >= POSITION_MARGIN_FRACTION * scene.grid
        return [vals[0][1]] if ok else []
    if spec[0] == "relation":
        _, d, rel, anchor_d = spec
        anchors = _matches(scene, anchor_d)
        if len(anchors) != 1:
            return []
        anchor = scene.shapes[anchors[0]]
        return [i for i in _matches(scene, d) if _relation_holds(scene.shapes[i], rel, anchor)]
    raise ValueError(f"unknown expression {spec!r}")


def _spec_text(spec: tuple) -> str:
    if spec[0] == "desc":
        return "the " + _desc_text(spec[1])
    if spec[0] in ("superlative", "extreme"):
        return f"the {spec[1]} {_desc_text(spec[2])}"
    return f"the {_desc_text(spec[1])} {spec[2]} the {_desc_text(spec[3])}"


def candidate_expressions(scene: Scene, question: str) -> list[tuple[str, int]]:
    """Every expression of type ``question`` with exactly one referent in ``scene``, as (text, target index),
    in a fixed order. For ``relation``, only those that need the relation when there are any."""
    g = scene.grid
    shapes = scene.shapes
    kinds = sorted({s.kind for s in shapes}, key=KINDS.index)
    colours = sorted({s.colour for s in shapes}, key=COLOURS.index)
    sizes = sorted({(s.size(g), s.kind) for s in shapes}, key=lambda t: (t[0], KINDS.index(t[1])))
    specs: list[tuple] = []
    if question == "colour":
        specs = [("desc", ("name", s.colour, s.kind)) for s in shapes] + [("desc", ("colour", c)) for c in colours]
    elif question == "size":
        specs = [("desc", ("size",) + sk) for sk in sizes]
    elif question in ("superlative", "extreme"):
        words = SUPERLATIVES if question == "superlative" else EXTREMES
        specs = [(question, w, d) for w in words for d in [("kind", k) for k in kinds] + [("any",)]]
    elif question == "relation":
        descs = [("kind", k) for k in kinds] + [("colour", c) for c in colours] + [("size",) + sk for sk in sizes]
        anchors = [("name", s.colour, s.kind) for s in shapes] + [
            ("size",) + sk for sk in sizes if len(_matches(scene, ("size",) + sk)) == 1
        ]
        specs = [("relation", d, rel, a) for d in descs for rel in RELATIONS for a in anchors]
    else:
        raise ValueError(f"unknown question type {question!r}")
    out = []
    needs_relation = []
    for spec in specs:
        hits = resolve(scene, spec)
        if len(hits) == 1:
            out.append((_spec_text(spec), hits[0]))
            if spec[0] == "relation" and len(_matches(scene, spec[1])) >= 2:
                needs_relation.append(out[-1])
    return needs_relation or out


# ----------------------------------------------------------------------------------------------------------------
# data


def _check_difficulty(difficulty: dict[str, Any]) -> dict[str, Any]:
    d = with_defaults("grounding", DEFAULT_DIFFICULTY, difficulty)
    need_int("grounding", d, "grid", 16)
    need_int("grounding", d, "num_shapes", 2)
    if d["num_shapes"] > MAX_SHAPES:
        raise UserError(f"grounding: difficulty knob num_shapes must be at most {MAX_SHAPES}, got {d['num_shapes']}")
    return d


def split_key(scene: Scene, question: str) -> str:
    """The canonical key of a scene and question text: grid, the shapes sorted, the question."""
    return f"{scene.grid}|" + ";".join(sorted(s.key() for s in scene.shapes)) + "|" + question


def split_of(scene: Scene, question: str) -> str:
    """Which split a scene with a question (the expression text) belongs to (``"train"`` or ``"test"``)."""
    return "test" if zlib.crc32(split_key(scene, question).encode()) % TEST_BUCKETS == 0 else "train"


def render_prompt(scene: Scene, expr: str) -> str:
    lines = [f"Shapes on a {scene.grid}x{scene.grid} grid (x right, y down):"]
    lines += [s.line(scene.grid) for s in scene.shapes]
    lines.append(f"Box of {expr}?")
    return "\n".join(lines) + "\n"


def render_completion(target: Shape, expr: str) -> str:
    x1, y1, x2, y2 = target.box
    sep = " " if target.kind == "rectangle" else ", "
    return (
        f"<think>{expr} is the {target.colour} {target.kind}{sep}{target.geometry()}: "
        f"x {x1} to {x2}, y {y1} to {y2}</think>\n<answer>[{x1},{y1},{x2},{y2}]</answer>"
    )


def _draw_examples(split: str, num_examples: int, seed: int, d: dict[str, Any]):
    """Yield (scene, question type, expression text, target index) for ``num_examples`` rows of ``split``."""
    rng = random.Random(f"grounding/{split}/{seed}")
    made = attempts = 0
    max_attempts = 1000 + 200 * num_examples
    while made < num_examples:
        question = rng.choice(QUESTIONS)
        while True:
            attempts += 1
            if attempts > max_attempts:
                raise UserError(
                    f"grounding: could not draw {num_examples} {split} examples with difficulty {d} "
                    f"(got {made} in {max_attempts} tries)"
                )
            scene = make_scene(rng, d["grid"], d["num_shapes"])
            if scene is None:
                continue
            cands = candidate_expressions(scene, question)
            if cands:
                break
        expr, target = rng.choice(cands)
        if split_of(scene, expr) != split:
            continue
        made += 1
        yield scene, question, expr, target


def _text_rows(split: str, num_examples: int, seed: int, **difficulty: Any) -> list[dict[str, Any]]:
    check_call("grounding", SPLITS, split, num_examples, seed)
    d = _check_difficulty(difficulty)
    rows = []
    for scene, question, expr, target in _draw_examples(split, num_examples, seed, d):
        shape = scene.shapes[target]
        rows.append(
            {
                "prompt": render_prompt(scene, expr),
                "completion": render_completion(shape, expr),
                "box": list(shape.box),
                "kind": shape.kind,
                "question": question,
                "_shape": shape,
                "_grid": scene.grid,
            }
        )
    return rows


def make_rows(split: str, num_examples: int, seed: int = 0, **difficulty: Any) -> list[dict[str, Any]]:
    """The rows of :func:`make_dataset` as a list of dicts (no ``datasets`` overhead)."""
    rows = _text_rows(split, num_examples, seed, **difficulty)
    for r in rows:
        shape, grid = r.pop("_shape"), r.pop("_grid")
        r["mask"] = lens.rle_encode(shape_mask(shape, grid, grid))
    return [{k: r[k] for k in ("prompt", "completion", "box", "mask", "kind", "question")} for r in rows]


def make_scenes(split: str, num_examples: int, seed: int = 0, **difficulty: Any) -> list[tuple[Scene, str, str, int]]:
    """The structured examples behind :func:`make_rows` (same arguments, same order): (scene, question type,
    expression text, target index)."""
    check_call("grounding", SPLITS, split, num_examples, seed)
    return list(_draw_examples(split, num_examples, seed, _check_difficulty(difficulty)))


def make_dataset(split: str, num_examples: int, seed: int = 0, **difficulty: Any):
    """A ``datasets.Dataset`` of ``num_examples`` grounding problems from ``split`` ("train" or "test").

    Columns ``prompt``, ``completion``, ``box``, ``mask``, ``kind``, ``question``; knobs and defaults in the module
    docstring. Deterministic in its arguments; train and test are disjoint.
    """
    from datasets import Dataset, Features, Sequence, Value

    rows = make_rows(split, num_examples, seed, **difficulty)
    features = Features(
        {
            "prompt": Value("string"),
            "completion": Value("string"),
            "box": Sequence(Value("int64")),
            "mask": {"size": Sequence(Value("int64")), "counts": Sequence(Value("int64"))},
            "kind": Value("string"),
            "question": Value("string"),
        }
    )
    return Dataset.from_list(rows, features=features)


def corpus(seed: int = 0) -> list[str]:
    """Texts to train the ``tiny-grounding`` tokenizer on: 2,000 training problems (prompt + demonstration) at
    grid 64 with 3 shapes, plus one line with every number of the grid and every character the format uses."""
    # explicit knobs (not DEFAULT_DIFFICULTY), so that retuning the defaults does not change the tokenizer
    rows = _text_rows("train", 2000, seed, grid=64, num_shapes=3)
    texts = [r["prompt"] + r["completion"] for r in rows]
    texts.append(" ".join(str(n) for n in range(65)) + " ()[],:?<>/x\n<think></think>\n<answer></answer>")
    return texts


# ----------------------------------------------------------------------------------------------------------------
# reward and metrics


def reward(prompts: list[Any], completions: list[Any], box: list[Any] | None = None, **kwargs: Any) -> list[float]:
    """Acc@0.5: 1.0 for each completion whose answer box (:func:`segrl.rewards.lens.parse_box`) has IoU >= 0.5
    with the ``box`` column, else 0.0. TRL's reward-function signature; other columns and keywords are ignored.

    Completions may be strings or conversational message lists. A missing or malformed ``box`` column is a data
    error and raises :class:`UserError`; a completion never makes it raise.
    """
    return [1.0 if (iou or 0.0) >= 0.5 else 0.0 for iou in lens.box_ious(completions, box)]


def metrics(
    prompts: list[Any], completions: list[Any], box: list[Any] | None = None, mask: list[Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """Batch means of ``format_rate`` (LENS's format reward), ``box_iou`` and ``mask_iou`` (plain IoU, 0 for an
    unparsed answer; the mask level compares the rasterised predicted box with the ``mask`` column) and
    ``acc_at_0.5`` (:func:`reward`). An empty batch gives zeros."""
    box_ious = [iou or 0.0 for iou in lens.box_ious(completions, box)]
    mask_ious = [iou or 0.0 for iou in lens.mask_ious(completions, mask)]
    n = len(completions)
    if n == 0:
        return {"format_rate": 0.0, "box_iou": 0.0, "mask_iou": 0.0, "acc_at_0.5": 0.0}
    return {
        "format_rate": sum(lens.format_reward(prompts, completions)) / n,
        "box_iou": sum(box_ious) / n,
        "mask_iou": sum(mask_ious) / n,
        "acc_at_0.5": sum(1.0 for v in box_ious if v >= 0.5) / n,
    }


__all__ = [
    "DEFAULT_DIFFICULTY",
    "Scene",
    "Shape",
    "candidate_expressions",
    "corpus",
    "make_dataset",
    "make_rows",
    "make_scene",
    "make_scenes",
    "metrics",
    "resolve",
    "reward",
    "reward_funcs",
    "shape_mask",
    "split_of",
]
