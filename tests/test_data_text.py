"""Text data: the vocabulary, every text format on a well-formed and a malformed file, the owner's split, the
wordnet-topics stand-in, and `copycatch data` for text (all on tiny files written here)."""

import csv
import json
from pathlib import Path

import pytest
import torch

import copycatch as cc
from copycatch.cli.main import main
from copycatch.core.errors import CorruptFile, DataNotFound, InvalidArgument
from copycatch.data import TensorData, Vocabulary, VocabularySettings, dataset_modality, list_datasets, prepare_dataset
from copycatch.data.prepare import MANIFEST

TOPICS = {
    1: ["world leaders meet for peace talks", "the election results surprised the nation", "war and peace again"],
    2: ["the team won the final match", "a great goal in the last minute", "the match ended in a draw"],
    3: ["stocks fell as markets opened", "the company reported record profit", "markets rally on profit news"],
}


@pytest.fixture(autouse=True)
def private_data_root(tmp_path, monkeypatch):
    """Nothing a test prepares lands in the user's data root."""
    monkeypatch.setenv("COPYCATCH_DATA_DIR", str(tmp_path / "root"))


def _write_csv(path: Path, rows, quoting=csv.QUOTE_ALL) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, quoting=quoting, lineterminator="\n").writerows(rows)
    return path


def _ag_rows(repeat: int = 4):
    return [[label, f"title {i}", text] for i in range(repeat) for label, texts in TOPICS.items() for text in texts]


@pytest.fixture()
def ag_folder(tmp_path) -> Path:
    folder = tmp_path / "ag_news_csv"
    folder.mkdir()
    _write_csv(folder / "train.csv", _ag_rows())
    _write_csv(folder / "test.csv", _ag_rows(1))
    (folder / "classes.txt").write_text("World\nSports\nBusiness\n", encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------------------------------------------------


def test_vocabulary_keeps_frequent_words_in_a_fixed_order_and_encodes_with_pad_and_unk():
    texts = ["The cat sat.", "the cat ran", "a dog ran", "Don't stop"]
    vocab = Vocabulary.build(texts, VocabularySettings(max_length=4, min_freq=2))
    assert vocab.tokens == ["<pad>", "<unk>", "cat", "ran", "the"]  # count 2 each: alphabetical
    assert Vocabulary.build(reversed(texts), vocab.settings) == vocab  # the order of the texts does not matter
    ids = vocab.encode(["the CAT ran away and far", "dog", ""])
    assert ids.dtype == torch.int64 and ids.shape == (3, 4)
    assert ids.tolist() == [[4, 2, 3, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert vocab.tokenize("Don't stop—it's 5 o'clock!") == ["don't", "stop", "it's", "5", "o'clock"]
    capped = Vocabulary.build(texts, VocabularySettings(min_freq=1, max_size=4))
    assert len(capped) == 4 and capped.tokens[2:] == ["cat", "ran"]


def test_vocabulary_round_trips_through_json_and_encodes_identically():
    texts = [t for ts in TOPICS.values() for t in ts]
    vocab = Vocabulary.build(texts, VocabularySettings(max_length=7, min_freq=1, lower=False))
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab and again.digest() == vocab.digest() and again.settings == vocab.settings
    probe = ["World leaders rally", "an unseen sentence about markets and the match", "Peace"]
    assert torch.equal(again.encode(probe), vocab.encode(probe))


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json", "not JSON"),
        ('{"format": "other/1"}', "not a copycatch vocabulary"),
        (
            '{"format": "copycatch.vocabulary/1", "pattern": "\\\\w+", "settings": {}, "tokens": ["a", "b"]}',
            "inconsistent",
        ),
        (
            '{"format": "copycatch.vocabulary/1", "pattern": "\\\\w+", "settings": {"max_lenght": 3}, '
            '"tokens": ["<pad>", "<unk>"]}',
            "max_lenght",
        ),
    ],
)
def test_a_damaged_vocabulary_is_a_corrupt_file(text, match):
    with pytest.raises(CorruptFile, match=match):
        Vocabulary.from_json(text)


def test_encode_refuses_a_bare_string():
    with pytest.raises(InvalidArgument, match="list of texts"):
        Vocabulary.build(["a a"]).encode("a")


# ---------------------------------------------------------------------------------------------------------------------
# AG News
# ---------------------------------------------------------------------------------------------------------------------


def test_ag_news_folder_loads_as_text_with_its_test_part_and_class_names(ag_folder):
    _write_csv(ag_folder / "test.csv", [[2, "Oil &amp; gas", "it#39;s up\\again"], *_ag_rows(1)])
    data = cc.load_dataset("ag-news", path=str(ag_folder))
    assert data.modality == "text" and data.class_names == ("World", "Sports", "Business")
    assert len(data.train) == 36 and len(data.test) == 10
    assert data.test.texts[0] == "Oil & gas it's up again"  # AG News's escapes undone
    assert data.y.tolist()[:3] == [0, 0, 0] and data.x.dtype == torch.int64
    assert torch.equal(data.x, data.vocabulary.encode(list(data.train.texts)))


@pytest.mark.parametrize(
    "row, match",
    [
        (["2", "only a title"], "line 3: expected 3 fields"),
        (["7", "t", "d"], "line 3: class '7' is not one of 1..3"),
        (["x", "t", "d"], "line 3: class 'x'"),
        (["1", " ", "  "], "line 3: empty text"),
    ],
)
def test_malformed_ag_news_rows_name_the_file_and_line(ag_folder, row, match):
    _write_csv(ag_folder / "train.csv", [*_ag_rows()[:2], row, *_ag_rows()[2:]])
    with pytest.raises(InvalidArgument, match=match) as err:
        cc.load_dataset("ag-news", path=str(ag_folder))
    assert "train.csv" in str(err.value)


def test_ag_news_bytes_that_are_not_utf8_name_their_line(ag_folder):
    path = ag_folder / "train.csv"
    path.write_bytes(path.read_bytes() + b'"1","bad","caf\xe9"\n')
    with pytest.raises(InvalidArgument, match=r"train.csv, line 37: not UTF-8"):
        cc.load_dataset("ag-news", path=str(ag_folder))


def test_bad_quoting_is_malformed_csv_with_a_line(ag_folder):
    path = ag_folder / "test.csv"
    path.write_text('"1","t","d"\n"2","quoted"then more,"x"\n', encoding="utf-8")
    with pytest.raises(InvalidArgument, match=r"test.csv, line 2: malformed CSV \(',' expected after"):
        cc.load_dataset("ag-news", path=str(ag_folder))


# ---------------------------------------------------------------------------------------------------------------------
# SST-2 and IMDB
# ---------------------------------------------------------------------------------------------------------------------


def _sst2(folder: Path, dev_rows=None) -> Path:
    folder.mkdir()
    lines = ["sentence\tlabel"] + [f'it is "{w}" good \t1' for w in "abcdef"] + [f"so {w} bad \t0" for w in "abcdef"]
    (folder / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "dev.tsv").write_text("\n".join(dev_rows or ["sentence\tlabel", "good\t1", "bad\t0"]) + "\n")
    return folder


def test_sst2_reads_train_and_dev_with_quotes_kept(tmp_path):
    data = cc.load_dataset("sst2", path=str(_sst2(tmp_path / "SST-2")))
    assert data.class_names == ("negative", "positive") and (len(data.train), len(data.test)) == (12, 2)
    assert data.train.texts[0] == 'it is "a" good' and data.y.sum() == 6


@pytest.mark.parametrize(
    "rows, match",
    [
        (["text\tlabel", "good\t1"], "line 1: header must name 'sentence' and 'label'"),
        (["sentence\tlabel", "good\t1", "fine\t2"], "line 3: label '2' is not 0"),
        (["sentence\tlabel", "good\t1\textra"], "line 2: expected 2 tab-separated fields"),
        (["sentence\tlabel", "\t1"], "line 2: empty text"),
    ],
)
def test_malformed_sst2_names_the_file_and_line(tmp_path, rows, match):
    with pytest.raises(InvalidArgument, match=match) as err:
        cc.load_dataset("sst2", path=str(_sst2(tmp_path / "SST-2", rows)))
    assert "dev.tsv" in str(err.value)


def _imdb(root: Path) -> Path:
    for part in ("train", "test"):
        for label, words in (("pos", "great fun"), ("neg", "dull mess")):
            folder = root / "aclImdb" / part / label
            folder.mkdir(parents=True)
            for i in range(3):
                (folder / f"{i}_{7 if label == 'pos' else 2}.txt").write_text(f"A {words}.<br /><br />Really {i}.")
    (root / "aclImdb" / "train" / "unsup").mkdir()
    return root


def test_imdb_folder_reads_both_parts_and_drops_line_break_tags(tmp_path):
    data = cc.load_dataset("imdb", path=str(_imdb(tmp_path)))
    assert (len(data.train), len(data.test)) == (6, 6) and data.class_names == ("neg", "pos")
    assert data.train.texts[0] == "A dull mess. Really 0." and data.y.tolist() == [0, 0, 0, 1, 1, 1]


def test_an_empty_imdb_review_names_its_file(tmp_path):
    root = _imdb(tmp_path)
    bad = root / "aclImdb" / "test" / "pos" / "9_8.txt"
    bad.write_text("<br />  \n")
    with pytest.raises(InvalidArgument, match=r"9_8.txt, line 1: empty text"):
        cc.load_dataset("imdb", path=str(root))


# ---------------------------------------------------------------------------------------------------------------------
# generic CSV and JSON Lines
# ---------------------------------------------------------------------------------------------------------------------


def _generic_rows():
    return [[text, ["politics", "sport", "money"][label - 1]] for label, texts in TOPICS.items() for text in texts]


def test_generic_csv_file_loads_by_path_with_sorted_class_names(tmp_path):
    path = _write_csv(
        tmp_path / "mine.csv", [["id", "label", "text"], *[[i, lab, t] for i, (t, lab) in enumerate(_generic_rows())]]
    )
    data = cc.load_dataset(str(path))  # a .csv file is a text-csv data set
    assert data.name == "text-csv" and data.class_names == ("money", "politics", "sport") and data.test is None
    assert data.train.texts[0] == TOPICS[1][0] and data.y[0] == 1


def test_generic_csv_folder_refuses_a_test_label_it_never_trained_on(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    _write_csv(folder / "train.csv", [["text", "label"], *_generic_rows()])
    _write_csv(folder / "test.csv", [["text", "label"], ["a fine match", "sport"], ["rain all day", "weather"]])
    with pytest.raises(InvalidArgument, match=r"test.csv, line 3: label 'weather' is not one of the training labels"):
        cc.load_dataset("text-csv", path=str(folder))
    _write_csv(folder / "test.csv", [["text", "label"], ["a fine match", "sport"]])
    assert len(cc.load_dataset("text-csv", path=str(folder)).test) == 1


@pytest.mark.parametrize(
    "rows, match",
    [
        ([["sentence", "label"], ["x", "a"]], "line 1: the header must name a 'text' and a 'label' column"),
        ([["text", "label"], ["x", "a"], ["y"]], "line 3: expected 2 fields, found 1"),
        ([["text", "label"], ["x", "a"], ["y", " "]], "line 3: empty label"),
        ([["text", "label"], ["x", "a"], ["", "b"]], "line 3: empty text"),
        ([["text", "label"], ["x", "a"], ["y", "a"]], "a classifier needs two or more"),
    ],
)
def test_malformed_generic_csv_names_the_file_and_line(tmp_path, rows, match):
    path = _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(InvalidArgument, match=match) as err:
        cc.load_dataset(str(path))
    assert "bad.csv" in str(err.value)


def test_jsonl_loads_string_and_integer_labels(tmp_path):
    path = tmp_path / "mine.jsonl"
    lines = [json.dumps({"text": t, "label": label}) for label, texts in TOPICS.items() for t in texts]
    path.write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n", encoding="utf-8")
    data = cc.load_dataset(str(path))
    assert data.name == "text-jsonl" and data.class_names == ("1", "2", "3") and len(data.train) == 9


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", "line 2: not JSON"),
        ('{"text": "x"}', "line 2: expected an object with 'text' and 'label'"),
        ('{"text": "x", "label": null}', "line 2: 'label' must be a non-empty string or an integer"),
        ('{"text": 5, "label": "a"}', "line 2: 'text' must be a string"),
        ('{"text": "   ", "label": "a"}', "line 2: empty text"),
    ],
)
def test_malformed_jsonl_names_the_file_and_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InvalidArgument, match=match) as err:
        cc.load_dataset("text-jsonl", path=str(path))
    assert "bad.jsonl" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------------
# the owner's split
# ---------------------------------------------------------------------------------------------------------------------


def test_text_splits_are_disjoint_seeded_and_encoded_with_the_owners_vocabulary(ag_folder):
    rows = [[label, title, f"{text} word{i}"] for i, (label, title, text) in enumerate(_ag_rows())]
    _write_csv(ag_folder / "train.csv", rows)  # every document has a word of its own
    data = cc.load_dataset("ag-news", path=str(ag_folder), min_freq=1)
    s = cc.make_splits(data, seed=3)
    assert s.modality == "text" and s.input_shape == (64,) and s.vocabulary is not None
    parts = ("owner_train", "owner_holdout", "attacker_pool")
    index = {p: set(s.indices[p].tolist()) for p in parts}
    assert not (index["owner_train"] & index["owner_holdout"] or index["owner_train"] & index["attacker_pool"])
    assert not index["owner_holdout"] & index["attacker_pool"]
    owner_words = {w for t in s.owner_train.texts for w in s.vocabulary.tokenize(t)}
    assert set(s.vocabulary.tokens[2:]) == owner_words  # built from owner_train alone
    assert (s.attacker_pool.x == 1).any(dim=1).all()  # the thief's own words are <unk> to the owner
    for p in (*parts, "test"):
        part = getattr(s, p)
        assert torch.equal(part.x, s.vocabulary.encode(list(part.texts)))
        source = data.test if p == "test" else data.train
        assert list(part.texts) == [source.texts[i] for i in s.indices[p]]
    again, other = cc.make_splits(data, seed=3), cc.make_splits(data, seed=4)
    assert list(again.attacker_pool.texts) == list(s.attacker_pool.texts) and again.vocabulary == s.vocabulary
    assert list(other.attacker_pool.texts) != list(s.attacker_pool.texts)
    d = s.describe()
    assert d["modality"] == "text" and d["vocabulary"]["size"] == len(s.vocabulary)
    assert s.provenance()["vocabulary"]["digest"] == s.vocabulary.digest()[:16]


def test_text_fingerprint_names_the_texts_not_the_vocabulary(ag_folder):
    short = cc.load_dataset("ag-news", path=str(ag_folder), max_length=3)
    long = cc.load_dataset("ag-news", path=str(ag_folder), max_length=30)
    assert short.fingerprint() == long.fingerprint() and short.x.shape[1] == 3
    _write_csv(ag_folder / "train.csv", _ag_rows(3))
    assert cc.load_dataset("ag-news", path=str(ag_folder)).fingerprint() != short.fingerprint()


def test_texts_ride_along_through_subset_concat_and_reencoding():
    vocab = Vocabulary.build(["a b c", "a b"], VocabularySettings(max_length=3, min_freq=1))
    texts = ["a b", "c c c c", "b a", "d"]
    data = TensorData(vocab.encode(texts), torch.arange(4), texts)
    part = data.subset(torch.tensor([3, 1]))
    assert list(part.texts) == ["d", "c c c c"] and part.x.tolist() == [[1, 0, 0], [4, 4, 4]]
    both = TensorData.concat([part, data.where(torch.tensor([True, False, False, False]))])
    assert list(both.texts) == ["d", "c c c c", "a b"] and both.stored.dtype == torch.int64
    other = Vocabulary.build(["d d"], VocabularySettings(max_length=2, min_freq=1))
    assert both.encoded(other).x.tolist() == [[2, 0], [1, 1], [1, 1]]
    with pytest.raises(InvalidArgument, match="no texts"):
        TensorData(torch.zeros(2, 3), torch.zeros(2)).encoded(other)


# ---------------------------------------------------------------------------------------------------------------------
# registry, prepare and the CLI
# ---------------------------------------------------------------------------------------------------------------------


def test_every_text_data_set_declares_text():
    names = list_datasets(modality="text")
    assert {"ag-news", "sst2", "imdb", "text-csv", "text-jsonl", "wordnet-topics"} <= set(names)
    assert all(dataset_modality(n) == "text" for n in names) and "fashion-mnist" not in names
    assert dataset_modality("mine.jsonl") == "text" and dataset_modality("mine.npz") == "image"


def test_data_list_shows_each_data_sets_modality(capsys):
    from copycatch.cli.options import MODALITIES

    assert MODALITIES == cc.data.MODALITIES  # the CLI's copy (kept for a torch-free --help) matches
    assert main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines if line.startswith("  ")}
    assert rows["wordnet-topics"] == "text" and rows["spoken-keywords"] == "audio" and rows["synthetic"] == "image"
    assert main(["data", "list", "--modality", "text"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == list_datasets(modality="text")


def test_prepare_with_path_checks_a_real_corpus_and_links_it_for_loading_by_name(ag_folder, tmp_path, capsys):
    assert main(["data", "prepare", "ag-news", "--path", str(ag_folder), "-q"]) == 0
    assert "linked" in capsys.readouterr().out
    linked = tmp_path / "root" / "ag-news"
    assert linked.is_symlink() and linked.resolve() == ag_folder.resolve()
    assert len(cc.load_dataset("ag-news").train) == 36
    assert main(["data", "show", "ag-news"]) == 0
    assert json.loads(capsys.readouterr().out)["modality"] == "text"


def test_prepare_with_a_malformed_corpus_is_one_line_naming_file_and_line(ag_folder, capsys):
    _write_csv(ag_folder / "test.csv", [["1", "t", "d"], ["9", "t", "d"]])
    assert main(["data", "prepare", "ag-news", "--path", str(ag_folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "test.csv, line 2: class '9'" in err


def test_prepare_explains_what_cannot_be_prepared(tmp_path):
    with pytest.raises(InvalidArgument, match="prepare ag-news --path WHERE"):
        prepare_dataset("ag-news")
    with pytest.raises(InvalidArgument, match="loads as it is"):
        prepare_dataset("digits")
    with pytest.raises(DataNotFound, match="copycatch data prepare wordnet-topics"):
        cc.load_dataset("wordnet-topics")
    with pytest.raises(DataNotFound, match="apt-get install -y wordnet-base"):
        prepare_dataset("wordnet-topics", params={"wordnet_dir": str(tmp_path)})
    with pytest.raises(InvalidArgument, match="unknown WordNet noun category 'sport'"):
        prepare_dataset("wordnet-topics", params={"categories": "animal,sport"})


WORDNET = Path("/usr/share/wordnet/data.noun")


@pytest.mark.skipif(not WORDNET.is_file(), reason="WordNet is not installed (apt-get install -y wordnet-base)")
def test_wordnet_topics_is_generated_reproducibly_and_loads_by_name_like_ag_news(tmp_path):
    params = {"categories": "animal,food,artifact,person", "per_class": 60, "test_per_class": 10}
    first = prepare_dataset("wordnet-topics", seed=5, params=params, progress=False)
    assert first.action == "generated" and first.directory == tmp_path / "root" / "wordnet-topics"
    data = cc.load_dataset("wordnet-topics")
    assert data.class_names == ("noun.animal", "noun.food", "noun.artifact", "noun.person")
    assert (len(data.train), len(data.test)) == (200, 40) and torch.bincount(data.test.y).tolist() == [10] * 4
    assert all(data.train.texts) and data.modality == "text"
    manifest = json.loads((first.directory / MANIFEST).read_text())
    assert prepare_dataset("wordnet-topics", seed=5, params=params).action == "already prepared"
    again = prepare_dataset("wordnet-topics", out=tmp_path / "again", seed=5, params=params, progress=False)
    other = prepare_dataset("wordnet-topics", out=tmp_path / "other", seed=6, params=params, progress=False)
    digest = json.loads((again.directory / MANIFEST).read_text())["content_sha256"]
    assert digest == manifest["content_sha256"]
    assert json.loads((other.directory / MANIFEST).read_text())["content_sha256"] != digest
    assert (first.directory / "train.csv").read_bytes() == (again.directory / "train.csv").read_bytes()
