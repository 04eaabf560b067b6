"""ReMedy data: readers (JSONL, TSV, the WMT layout), pairs per source, the split by source, the model input."""

import json

import pytest
from transformers import AutoTokenizer

from segrl.errors import UserError
from segrl.remedy.data import Rating, make_pairs, ratings_from_rows, read_ratings, read_wmt, split_by_source
from segrl.remedy.inputs import encode, language_name, request, split_lp

ROWS = [
    {"lp": "en-de", "src": "the cat", "ref": "die Katze", "mt": "die Katze", "system": "A", "score": 0.0},
    {"lp": "en-de", "src": "the cat", "ref": "die Katze", "mt": "der Katze", "system": "B", "score": -1.0},
    {"lp": "en-de", "src": "the cat", "ref": "die Katze", "mt": "das Katze", "system": "C", "score": -1.0},
    {"lp": "en-de", "src": "a dog", "ref": "ein Hund", "mt": "ein Hund", "system": "A", "score": -0.5},
    {"lp": "en-de", "src": "a dog", "ref": "ein Hund", "mt": "eine Hund", "system": "B", "score": -5.5},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_pairs_per_source_drop_ties_and_respect_min_gap():
    ratings = ratings_from_rows(ROWS, "rows")
    pairs, counts = make_pairs(ratings)
    # "the cat": A>B, A>C, B=C (tie, dropped); "a dog": A>B
    assert counts == {"pairs": 3, "ties": 1, "below_min_gap": 0, "items": 2}
    assert [(p["chosen_system"], p["rejected_system"], p["gap"]) for p in pairs] == [
        ("A", "B", 1.0), ("A", "C", 1.0), ("A", "B", 5.0)]
    assert pairs[0]["chosen"] == "die Katze" and pairs[0]["rejected"] == "der Katze" and pairs[0]["ref"] == "die Katze"
    pairs, counts = make_pairs(ratings, min_gap=2.0)
    assert counts["pairs"] == 1 and counts["below_min_gap"] == 2 and pairs[0]["item"] == "en-de/a dog"


def test_no_pairs_is_a_clear_error():
    with pytest.raises(UserError, match="no preference pairs: 1 source item"):
        make_pairs(ratings_from_rows(ROWS[1:3], "rows"))  # one item, one tie
    with pytest.raises(UserError, match="min_gap"):
        make_pairs(ratings_from_rows(ROWS, "rows"), min_gap=-1)


def test_jsonl_and_tsv_read_the_same(tmp_path):
    from_jsonl = read_ratings(write_jsonl(tmp_path / "r.jsonl", ROWS))
    header = "lp\tsrc\tref\tmt\tsystem\tscore"
    lines = [header] + ["\t".join(str(r[k]) for k in header.split("\t")) for r in ROWS]
    (tmp_path / "r.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_ratings(tmp_path / "r.tsv") == from_jsonl
    assert from_jsonl[0] == Rating("en-de", "the cat", "die Katze", "A", 0.0, "die Katze", "en-de/the cat")


@pytest.mark.parametrize("row, message", [
    ({**ROWS[0], "lp": "en-xx"}, r"r.jsonl:2: unknown language code 'xx'"),
    ({**ROWS[0], "lp": "english"}, r"r.jsonl:2: a language pair is written 'src-tgt'"),
    ({**ROWS[0], "mt": "  "}, r"r.jsonl:2: empty hypothesis"),
    ({**ROWS[0], "score": "nan"}, r"r.jsonl:2: field 'score' must be a finite number"),
    ({**ROWS[0], "score": "good"}, r"r.jsonl:2: field 'score' must be a number"),
    ({**ROWS[0], "score": True}, r"r.jsonl:2: field 'score' must be a finite number"),
    ({k: v for k, v in ROWS[0].items() if k != "system"}, r"r.jsonl:2: missing field\(s\) system"),
    ({**ROWS[0], "src": 3}, r"r.jsonl:2: field 'src' must be text"),
])
def test_bad_rows_name_the_file_line_and_field(tmp_path, row, message):
    with pytest.raises(UserError, match=message):
        read_ratings(write_jsonl(tmp_path / "r.jsonl", [ROWS[1], row]))


def test_bad_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no ratings"):
        read_ratings(tmp_path / "e.jsonl")
    (tmp_path / "b.jsonl").write_text('{"lp": "en-de"\n')
    with pytest.raises(UserError, match="b.jsonl:1: not valid JSON"):
        read_ratings(tmp_path / "b.jsonl")
    (tmp_path / "h.tsv").write_text("lp\tsrc\tmt\n")
    with pytest.raises(UserError, match="h.tsv:1: the header must name the columns"):
        read_ratings(tmp_path / "h.tsv")
    with pytest.raises(UserError, match="cannot read"):
        read_ratings(tmp_path / "missing.jsonl")


def make_wmt(root, outputs, scores, sources=("s1", "s2", "s3"), refs=("r1", "r2", "r3")):
    for folder in ("sources", "references", "human-scores", "system-outputs/en-de"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "sources" / "en-de.txt").write_text("".join(s + "\n" for s in sources))
    (root / "references" / "en-de.refA.txt").write_text("".join(r + "\n" for r in refs))
    for system, lines in outputs.items():
        (root / "system-outputs" / "en-de" / f"{system}.txt").write_text("".join(x + "\n" for x in lines))
    (root / "human-scores" / "en-de.seg.mqm.score").write_text(
        "".join(f"{system}\t{value}\n" for system, values in scores.items() for value in values))
    return root


def test_wmt_layout(tmp_path):
    root = make_wmt(tmp_path, {"A": ["a1", "a2", "a3"], "B": ["b1", "b2", "b3"]},
                    {"A": ["-1", "None", "0"], "B": ["-5", "-2", "0"]})
    ratings, unrated = read_wmt(root, "en-de")
    assert unrated == 1
    assert [(r.system, r.src, r.mt, r.ref, r.score, r.item) for r in ratings] == [
        ("A", "s1", "a1", "r1", -1.0, "en-de/0"), ("A", "s3", "a3", "r3", 0.0, "en-de/2"),
        ("B", "s1", "b1", "r1", -5.0, "en-de/0"), ("B", "s2", "b2", "r2", -2.0, "en-de/1"),
        ("B", "s3", "b3", "r3", 0.0, "en-de/2")]
    pairs, counts = make_pairs(ratings)
    assert counts["pairs"] == 1 and counts["ties"] == 1  # s1: A > B; s3: a tie; s2: B alone


def test_wmt_files_without_a_final_newline_keep_their_last_line(tmp_path):
    root = make_wmt(tmp_path, {"A": ["a1", "a2", "a3"], "B": ["b1", "b2", "b3"]},
                    {"A": ["-1", "-2", "0"], "B": ["-5", "-2", "-1"]})
    for path in [root / "sources" / "en-de.txt", root / "system-outputs" / "en-de" / "A.txt",
                 root / "human-scores" / "en-de.seg.mqm.score"]:
        path.write_text(path.read_text().rstrip("\n"))
    ratings, _ = read_wmt(root, "en-de")
    assert len(ratings) == 6 and ratings[2].mt == "a3" and ratings[5].score == -1.0


def test_wmt_layout_errors(tmp_path):
    root = make_wmt(tmp_path / "a", {"A": ["a1", "a2"]}, {"A": ["-1", "0", "0"]})
    with pytest.raises(UserError, match=r"A.txt: 2 lines and 3 scores"):
        read_wmt(root, "en-de")
    root = make_wmt(tmp_path / "b", {"A": ["a1", "a2", "a3"]}, {"A": ["-1", "nan", "0"]})
    with pytest.raises(UserError, match=r"en-de.seg.mqm.score:2 \(A.txt line 2\): field 'score' must be a finite"):
        read_wmt(root, "en-de")
    root = make_wmt(tmp_path / "c", {"A": ["a1", "a2", "a3"]}, {"A": ["-1", "0", "0"]}, refs=("r1",))
    with pytest.raises(UserError, match=r"en-de.refA.txt: 1 lines, but .* has 3"):
        read_wmt(root, "en-de")
    root = make_wmt(tmp_path / "d", {"A": ["a1", "", "a3"]}, {"A": ["-1", "0", "0"]})
    with pytest.raises(UserError, match=r"A.txt line 2\): empty hypothesis"):
        read_wmt(root, "en-de")
    with pytest.raises(UserError, match="unknown language code 'zz'"):
        read_wmt(root, "en-zz")


def test_split_by_source_never_shares_a_source():
    rows = [{"lp": "en-de", "src": f"sentence {i % 50}", "mt": f"h{i}", "system": f"s{i // 50}", "score": float(i),
             "ref": "r", "item": f"item-{i}"} for i in range(300)]  # item ids differ even for the same source
    train, test = split_by_source(ratings_from_rows(rows, "rows"), test_fraction=0.2, seed=3)
    assert {r.src for r in train}.isdisjoint({r.src for r in test})
    assert len(train) + len(test) == 300 and 0 < len({r.src for r in test}) < 50
    assert split_by_source(ratings_from_rows(rows, "rows"), 0.2, seed=3) == (train, test)  # deterministic
    assert split_by_source(ratings_from_rows(rows, "rows"), 0.0)[1] == []


def test_language_names_and_request():
    assert split_lp("en-de") == ("en", "de") and language_name("qaa") == "Toy language A"
    with pytest.raises(UserError, match="--lp: unknown language code 'xx'"):
        split_lp("en-xx", "--lp")
    assert request("Hello.", "en-de", "Hallo.") == (
        "Translate the following English text into fluent German.\n\nEnglish: Hello.\n\n"
        "Use this German translation as a template: Hallo.")
    assert request("Hello.", "en-de") == "Translate the following English text into fluent German.\n\nEnglish: Hello."


def test_encode_plain_and_chat(random_model_dir, smollm2_cache):
    from segrl.models import resolve_model_path

    plain = AutoTokenizer.from_pretrained(random_model_dir)
    ids = encode(plain, "the cat", "die Katze", "en-de", "die Katze")
    assert ids[-1] == plain.eos_token_id
    assert plain.decode(ids[:-1]) == ("Translate the following English text into fluent German.\nEnglish: the cat\n"
                                      "Template: die Katze\nGerman: die Katze")
    assert "Template" not in plain.decode(encode(plain, "the cat", "die Katze", "en-de"))
    chat = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m", cache_dir=smollm2_cache))
    text = chat.decode(encode(chat, "the cat", "die Katze", "en-de", "die Katze"))
    assert "<|im_start|>user\nTranslate the following English text into fluent German.\n\nEnglish: the cat" in text
    assert text.endswith("<|im_start|>assistant\ndie Katze<|im_end|>\n")


def test_plain_input_is_the_toymt_corpus_layout(random_model_dir):
    """The tiny-toymt tokenizer is trained on toymt's rendering of the request: encode must produce exactly it."""
    from segrl.tasks import toymt

    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    for row in toymt.make_ratings("2023", num_sources=2)[:4]:
        for ref in (row["ref"], None):
            ids = encode(tokenizer, row["src"], row["mt"], row["lp"], ref)
            assert tokenizer.decode(ids[:-1]) == toymt.remedy_text(row["src"], row["mt"], row["lp"], ref)
