"""GLUE task reading: real files in ../shared/data/glue and generated files for the tasks
not shipped there (columns, headers, label maps, malformed rows, missing folders)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hadref.data import get_task, load_split, report_skipped
from hadref.data.glue import TASKS, data_root
from hadref.errors import HadrefError


def test_sst2_real_counts_and_first_rows(glue_dir):
    (train,) = load_split("sst2", "train", glue_dir)
    (dev,) = load_split("sst2", "dev", glue_dir)
    assert len(train) == 67349 and len(dev) == 872
    assert dev.texts_a[0] == "it 's a charming and often affecting journey . "
    assert dev.labels[0] == 1 and train.labels[0] == 0
    assert int(dev.labels.sum()) == 444 and int(train.labels.sum()) == 37569
    assert dev.texts_b is None and dev.lines[0] == 2  # line 1 is the header


def test_cola_no_header_and_rte_quote_row(glue_dir):
    (train,) = load_split("cola", "train", glue_dir)
    (dev,) = load_split("cola", "dev", glue_dir)  # dev has no final newline
    assert len(train) == 8551 and len(dev) == 1043
    assert int(dev.labels.sum()) == 721
    assert dev.texts_a[0] == "The sailors rode the breeze clear of the rocks."
    (rte,) = load_split("rte", "train", glue_dir)
    assert len(rte) == 2490 and rte.texts_b is not None
    # row index 2164 starts with a double quote: QUOTE_NONE keeps it one row
    quoted = [a for a in rte.texts_a if a.startswith('"')]
    assert quoted and int((rte.labels == 0).sum()) == 1249  # entailment is class 0


def _write(path, lines, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def test_generated_pair_and_regression_tasks(tmp_path):
    _write(tmp_path / "MRPC" / "train.tsv",
           ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t7\t8\ta b\tc d", "0\t9\t10\te\tf"],
           bom=True)
    (mrpc,) = load_split("mrpc", "train", tmp_path)
    assert mrpc.texts_a == ["a b", "e"] and mrpc.texts_b == ["c d", "f"]
    assert mrpc.labels.tolist() == [1, 0] and get_task("mrpc").metrics == ("f1", "accuracy")

    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    _write(tmp_path / "STS-B" / "dev.tsv", [header, "0\tg\tf\t2012\t1\ts\ts\tx y\tz\t3.800"])
    (stsb,) = load_split("stsb", "dev", tmp_path)
    assert stsb.labels.dtype == np.float32 and stsb.labels[0] == np.float32(3.8)
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1


def test_mnli_two_dev_files_and_gold_label_column(tmp_path):
    cols = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p",
            "sentence1", "sentence2", "label1", "label2", "label3", "label4", "label5", "gold_label"]
    row = ["0", "1", "2", "g", "", "", "", "", "p", "h", "neutral", "neutral", "entailment",
           "neutral", "neutral", "entailment"]
    for name in ("dev_matched.tsv", "dev_mismatched.tsv"):
        _write(tmp_path / "MNLI" / name, ["\t".join(cols), "\t".join(row)])
    splits = load_split("mnli", "dev", tmp_path)
    assert [s.path.name for s in splits] == ["dev_matched.tsv", "dev_mismatched.tsv"]
    assert splits[0].labels.tolist() == [1]  # gold_label 'entailment', not label1


def test_malformed_rows_error_or_skip(tmp_path, capsys):
    path = tmp_path / "SST-2" / "train.tsv"
    _write(path, ["sentence\tlabel", "good\t1", "too\tmany\tfields", "bad label\t7", "fine\t0"])
    with pytest.raises(HadrefError, match=r"train\.tsv:3: malformed sst2 row: expected 2 "
                                          r"tab-separated fields, got 3.*--skip-bad-rows"):
        load_split("sst2", "train", tmp_path)
    (split,) = load_split("sst2", "train", tmp_path, skip_bad_rows=True)
    assert split.texts_a == ["good", "fine"] and split.lines.tolist() == [2, 5]
    assert [line for line, _ in split.skipped] == [3, 4]
    assert "unknown label '7'" in split.skipped[1][1]
    assert report_skipped([split]) == 2
    assert "skipped 2 malformed row(s)" in capsys.readouterr().err


def test_bad_score_and_bad_header(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    _write(tmp_path / "STS-B" / "train.tsv", [header, "0\tg\tf\t2012\t1\ts\ts\tx\tz\tnan"])
    with pytest.raises(HadrefError, match=r":2: .*finite number"):
        load_split("stsb", "train", tmp_path)
    _write(tmp_path / "RTE" / "train.tsv", ["index\tpremise\thypothesis\tlabel", "0\ta\tb\tentailment"])
    with pytest.raises(HadrefError, match=r"train\.tsv:1: header lacks column\(s\) 'sentence1'"):
        load_split("rte", "train", tmp_path)


def test_missing_folder_names_path_and_layout(tmp_path, monkeypatch):
    with pytest.raises(HadrefError, match=r"GLUE task folder not found: .*QNLI .*QNLI/train\.tsv"):
        load_split("qnli", "train", tmp_path)
    monkeypatch.delenv("HADREF_DATA", raising=False)
    with pytest.raises(HadrefError, match="--data DIR or set HADREF_DATA"):
        data_root(None)
    monkeypatch.setenv("HADREF_DATA", str(tmp_path))
    assert data_root(None) == tmp_path
    with pytest.raises(HadrefError, match="unknown GLUE task 'sst5'"):
        get_task("sst5")
    assert get_task("SST-2").name == "sst2" and len(TASKS) == 9


def test_limit_keeps_first_rows(glue_dir):
    (dev,) = load_split("sst2", "dev", glue_dir, limit=10)
    assert len(dev) == 10 and dev.lines.tolist() == list(range(2, 12))
    sub = dev.subset([3, 1])
    assert sub.texts_a == [dev.texts_a[3], dev.texts_a[1]]



_text = st.text(st.characters(blacklist_characters="\t\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
                              blacklist_categories=("Cs",)), min_size=1, max_size=30)


@settings(max_examples=30)
@given(st.lists(st.tuples(_text, _text, st.sampled_from(["entailment", "not_entailment"])),
                min_size=1, max_size=12))
def test_rte_rows_read_back_exactly(tmp_path_factory, rows):
    """Any text without tabs or line breaks, quotes included, is read back unchanged."""
    root = tmp_path_factory.mktemp("rte")
    lines = ["index\tsentence1\tsentence2\tlabel"] + [
        f"{i}\t{a}\t{b}\t{y}" for i, (a, b, y) in enumerate(rows)]
    (root / "RTE").mkdir()
    (root / "RTE" / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (split,) = load_split("rte", "dev", root)
    assert split.texts_a == [a for a, _, _ in rows] and split.texts_b == [b for _, b, _ in rows]
    assert split.labels.tolist() == [0 if y == "entailment" else 1 for _, _, y in rows]
