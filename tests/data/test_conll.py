import pytest

from conftest import SHARED_DATA, UD, hub_parquet
from jaxbatch.data import conll
from jaxbatch.errors import DataError


@pytest.mark.parametrize("iob1,iob2", [
    (["I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]),
    (["I-PER", "B-PER", "I-PER"], ["B-PER", "B-PER", "I-PER"]),  # B- between adjacent same-type entities
    (["I-LOC", "I-ORG", "I-ORG"], ["B-LOC", "B-ORG", "I-ORG"]),  # type change starts an entity
    (["O", "I-MISC", "O", "I-MISC"], ["O", "B-MISC", "O", "B-MISC"]),
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),  # IOB2 input unchanged
])
def test_iob1_to_iob2(iob1, iob2):
    assert conll.iob1_to_iob2(iob1) == iob2
    assert conll.iob1_to_iob2(iob2) == iob2


def test_read_handles_docstart_anywhere_two_columns_and_no_final_newline(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("-DOCSTART- O\n\nJohn I-PER\nSmith I-PER\nflew O\n-DOCSTART- O\nto O\nParis I-LOC")
    sents = conll.read(f)
    assert [s.words for s in sents] == [["John", "Smith", "flew"], ["to", "Paris"]]
    assert [s.tags for s in sents] == [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]
    f.write_bytes(b"\xef\xbb\xbf-DOCSTART- -X- -X- O\r\n\r\nEU NNP B-NP B-ORG\r\n")  # byte-order mark, CRLF
    assert [(s.words, s.tags) for s in conll.read(f)] == [(["EU"], ["B-ORG"])]


def test_any_column_count_word_first_tag_last(tmp_path):
    """CoNLL-2002 Dutch (word POS NER, tab-separated here) and CoNLL-2000 chunking (word POS chunk) read too."""
    f = tmp_path / "x.txt"
    f.write_text("De\tArt\tO\nEU\tN\tB-ORG\nKomt\tV\tO\n\nJan\tN\tB-PER\n")
    assert [(s.words, s.tags, s.line) for s in conll.read(f)] == [
        (["De", "EU", "Komt"], ["O", "B-ORG", "O"], 1), (["Jan"], ["B-PER"], 5)]
    f.write_text("He PRP B-NP\nreckons VBZ B-VP\nthe DT B-NP\ncurrent JJ I-NP\n")
    assert conll.read(f)[0].tags == ["B-NP", "B-VP", "B-NP", "I-NP"]


def test_comment_lines_before_a_sentence_are_skipped_words_named_hash_are_kept(tmp_path):
    """MultiCoNER's `# id <uuid>\tdomain=en` before each sentence (as many columns as its `word _ _ TAG` lines), and
    a longer comment, are skipped; a `#` word tagged O keeps its place, at a sentence's start or inside it; a `#`
    line inside a sentence that is no word is refused at its line; a POS file's `# SYM` and a word list's `#` stay
    words; words keep their lines."""
    f = tmp_path / "en_train.conll"
    f.write_text("# id 1b2c\tdomain=en\nJohn _ _ B-PER\nflew _ _ O\n\n# id 3d4e\tdomain=en\n# a longer comment x\n"
                 "Paris _ _ B-LOC\n# _ _ O\n\n#\t_ _ O\nhi _ _ O\n")
    want = [(["John", "flew"], ["B-PER", "O"], 2), (["Paris", "#"], ["B-LOC", "O"], 7), (["#", "hi"], ["O", "O"], 10)]
    assert [(s.words, s.tags, s.line) for s in conll.read(f)] == want
    assert [(s.words, s.line) for s in conll.read(f, tagged=False)] == [(w, n) for w, _, n in want]
    with pytest.raises(DataError, match=r"en_train.conll:2: tag 'domain=en' is not O or PREFIX-TYPE"):
        f.write_text("John _ _ B-PER\n# id 1b2c\tdomain=en\n")
        conll.read(f)
    f.write_text("# SYM\nhi UH\n\n# a comment\nyes UH\n")
    assert [(s.words, s.tags, s.line) for s in conll.read(f)] == [(["#", "hi"], ["SYM", "UH"], 1), (["yes"], ["UH"], 5)]
    f.write_text("# a comment\nJohn\n\n#\nhi\n")
    assert [(s.words, s.line) for s in conll.read(f, tagged=False)] == [(["John"], 2), (["#", "hi"], 4)]


def test_multiconer_file_names_are_found(tmp_path):
    for name in ("en_train.conll", "en_dev.conll"):
        (tmp_path / name).write_text("# id 1\tdomain=en\nhi _ _ O\n")
    assert conll.split_paths(tmp_path) == {"train": tmp_path / "en_train.conll",
                                           "validation": tmp_path / "en_dev.conll"}
    (tmp_path / "de_train.conll").write_text("# id 1\tdomain=de\nhallo _ _ O\n")
    with pytest.raises(DataError, match=r"2 train files match \*_train.conll \(de_train.conll, en_train.conll\); "
                                        r"keep one"):
        conll.split_paths(tmp_path)


@pytest.mark.parametrize("given,iob2", [
    (["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC"]),  # IOBES
    (["S-PER", "S-PER", "B-ORG", "E-ORG", "S-ORG"], ["B-PER", "B-PER", "B-ORG", "I-ORG", "B-ORG"]),  # adjacent
    (["U-PER", "B-LOC", "L-LOC", "B-LOC", "L-LOC"], ["B-PER", "B-LOC", "I-LOC", "B-LOC", "I-LOC"]),  # BILOU
])
def test_iobes_and_bilou_read_as_the_same_entities_in_iob2(tmp_path, given, iob2):
    f = tmp_path / "x.txt"
    f.write_text("".join(f"w{i} {t}\n" for i, t in enumerate(given)))
    assert conll.read(f)[0].tags == iob2


@pytest.mark.parametrize("name,content,message", [
    ("x.txt", "EU\n", r"x.txt:1: expected the word, optional columns, then its tag; got one column: 'EU'"),
    ("x.txt", "EU NNP B-NP I-ORG\nrejects VBZ\n", r"x.txt:2: 2 columns, but the file started with 4"),
    ("x.txt", "EU NNP B-NP B-ORG\nsays VBZ B-VP ORG\n",
     r"x.txt:2: tag 'ORG' is not O or PREFIX-TYPE with a prefix of B-, I-, S-, U-, E-, L-, as the tags beside it are"),
    ("x.txt", "", r"x.txt: file is empty"),
    ("x.txt", "-DOCSTART- -X- O O\n\n", r"x.txt: no sentences"),
    ("x.jsonl", '{"tokens": ["a"], "ner_tags": [0]}\n{"text": "a b"}\n',
     r"x.jsonl:2: expected a word list \(tokens or words\) and a tag list \(ner_tags or tags or labels or ner or upos "
     r"or pos_tags\), got the keys text"),
    ("x.jsonl", '{"tokens": ["a", "b"], "ner_tags": [0]}\n',
     r"x.jsonl:1: 'ner_tags' must be a list with one tag per word \(2\)"),
    ("x.jsonl", '{"tokens": "a b", "ner_tags": [0, 0]}\n',
     r"x.jsonl:1: 'tokens' must be a list of non-empty strings"),
    ("x.jsonl", '{"tokens": ["a", ""], "ner_tags": [0, 0]}\n',
     r"x.jsonl:1: 'tokens' must be a list of non-empty strings"),
    ("x.jsonl", '{"tokens": ["a"], "ner_tags": [0]}\n{"tokens": ["b"], "ner_tags": ["O"]}\n',
     r"x.jsonl:2: 'ner_tags' must hold tag names \(non-empty strings\) or class ids \(whole numbers from 0\), "
     r"one kind"),
    ("x.jsonl", '{"tokens": ["a", "b"], "ner_tags": [0, "O"]}\n', r"x.jsonl:1: 'ner_tags' must hold tag names"),
    ("x.jsonl", '{"tokens": ["a"], "ner_tags": [-1]}\n', r"x.jsonl:1: 'ner_tags' must hold tag names"),
    ("x.jsonl", '{"tokens": ["a"], "ner_tags": [true]}\n', r"x.jsonl:1: 'ner_tags' must hold tag names"),
    ("x.jsonl", '{"tokens": ["a"], "tags": [" "]}\n', r"x.jsonl:1: 'tags' must hold tag names \(non-empty strings\)"),
    ("x.jsonl", '{"tokens": ["a"], "ner_tags": ["B-PER"]}\n{"tokens": ["a", "b"], "ner_tags": ["O", "PER"]}\n',
     r"x.jsonl:2: tag 'PER' is not O or PREFIX-TYPE"),
    ("x.jsonl", '[{"tokens": ["a"], "ner_tags": ["O"]}]\n',
     r"x.jsonl: holds one JSON array; write one object per line"),
    ("x.jsonl", '{"tokens": ["a"], "ner_tags": ["O"]\n', r"x.jsonl:1: not a JSON object"),
    ("x.jsonl", '{"tokens": ["-DOCSTART-"], "ner_tags": ["O"]}\n', r"x.jsonl: no sentences"),
])
def test_bad_files_name_file_and_line(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(DataError, match=message):
        conll.read(f)


def test_wrong_encoding_and_missing_paths(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes("Müller I-PER\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"x.txt:1: not UTF-8"):
        conll.read(f)
    with pytest.raises(DataError, match="does not exist"):
        conll.split_paths(tmp_path / "nope")
    with pytest.raises(DataError, match="no train file"):
        conll.split_paths(tmp_path)
    (tmp_path / "train.txt").write_text("EU B-ORG\n")
    (tmp_path / "dev.txt").write_text("EU B-ORG\n")  # `evaluate` asks for the test split unless told otherwise
    with pytest.raises(DataError, match=r"no test file \(looked for eng.testb, test.txt, test.jsonl, .*, "
                                        r"\*-ud-test.conllu, .*\); found train, validation$"):
        conll.split_paths(tmp_path, required=("test",))


@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir(), reason="shared CoNLL-2003 copy not present")
def test_shared_conll_counts():
    paths = conll.split_paths(SHARED_DATA / "conll2003")
    train, dev = conll.read(paths["train"]), conll.read(paths["validation"])
    assert (len(train), sum(len(s.words) for s in train)) == (14041, 203621)
    assert (len(dev), sum(len(s.words) for s in dev)) == (3250, 51362)
    assert conll.label_names(train) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert all(t[0] != "I" or i and s.tags[i - 1][2:] == t[2:] for s in train for i, t in enumerate(s.tags))


def test_json_lines_as_datasets_writes_them(tmp_path):
    """`datasets`' conll2003 dump: -DOCSTART- kept as a sentence (skipped here, as in column files), extra keys,
    class ids kept as written (named by the run's config, data/tasks.py); names are read like column tags."""
    import json

    f = tmp_path / "train.json"
    rows = [{"id": "0", "tokens": ["-DOCSTART-"], "pos_tags": [0], "ner_tags": [0]},
            {"id": "1", "tokens": ["EU", "rejects", "German"], "pos_tags": [22, 42, 16], "ner_tags": [3, 0, 7]},
            {"id": "2", "tokens": [], "ner_tags": []}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [(s.words, s.tags, s.line) for s in conll.read(f)] == [(["EU", "rejects", "German"], ["3", "0", "7"], 2)]
    assert conll.is_ids(conll.read(f)[0].tags)
    f = tmp_path / "dev.jsonl"
    f.write_text('{"words": ["Jan", "Smit"], "tags": ["S-PER", "S-PER"]}\n\n{"words": ["Oslo"], "tags": ["I-LOC"]}\n')
    assert [(s.tags, s.line) for s in conll.read(f)] == [(["B-PER", "B-PER"], 1), (["B-LOC"], 3)]
    assert not conll.is_ids(conll.read(f)[0].tags)
    d = tmp_path / "d"
    d.mkdir()
    for name in ("train.jsonl", "validation.jsonl", "test.json"):
        (d / name).write_text('{"tokens": ["a"], "ner_tags": ["O"]}\n')
    assert {k: p.name for k, p in conll.split_paths(d).items()} == {
        "train": "train.jsonl", "validation": "validation.jsonl", "test": "test.json"}


def test_plain_tags_part_of_speech_are_kept_as_written(tmp_path):
    """A file with no prefixed tag holds plain tags (each for its word alone: no IOB2 pass); its label set is
    the tags sorted, O first."""
    f = tmp_path / "x.txt"
    f.write_text("The DT\nEU NNP\nsays VBZ\n-LRB- -LRB-\n\nI-95 NNP\nO O\n")
    sents = conll.read(f)
    assert [(s.words, s.tags) for s in sents] == [(["The", "EU", "says", "-LRB-"], ["DT", "NNP", "VBZ", "-LRB-"]),
                                                  (["I-95", "O"], ["NNP", "O"])]
    assert conll.label_names(sents) == ["O", "-LRB-", "DT", "NNP", "VBZ"]
    assert not conll.is_entity_scheme(conll.label_names(sents))
    f = tmp_path / "x.jsonl"
    f.write_text('{"tokens": ["Jan", "loopt"], "upos": [11, 16], "tags": ["PROPN", "VERB"]}\n')
    assert conll.read(f)[0].tags == ["PROPN", "VERB"]
    f.write_text('{"idx": "w-1", "tokens": ["Jan", "loopt"], "upos": [10, 16], "xpos": ["NNP", "VBZ"]}\n')  # UD
    assert conll.read(f)[0].tags == ["10", "16"]  # ids, for data.labels to name
    assert conll.is_entity_scheme(["O", "B-PER"]) and conll.is_entity_scheme(["U-PER"])


def test_conllu_reads_form_and_upos_of_the_tree_words(tmp_path):
    """Universal Dependencies: comments, multi-word token ranges and empty nodes are not words of the tree."""
    f = tmp_path / "en_ewt-ud-train.conllu"
    f.write_text(UD)
    assert [(s.words, s.tags, s.line) for s in conll.read(f)] == [
        (["Do", "n't", "go", "."], ["AUX", "PART", "VERB", "PUNCT"], 4), (["Hi"], ["INTJ"], 11)]
    assert not conll.lines_per_word(f) and conll.lines_per_word(tmp_path / "train.txt")
    (tmp_path / "en_ewt-ud-dev.conllu").write_text(UD)
    assert {k: p.name for k, p in conll.split_paths(tmp_path).items()} == {
        "train": "en_ewt-ud-train.conllu", "validation": "en_ewt-ud-dev.conllu"}
    (tmp_path / "fr_gsd-ud-dev.conllu").write_text(UD)
    with pytest.raises(DataError, match=r"2 validation files match \*-ud-dev.conllu \(en_ewt-ud-dev.conllu, "
                                        r"fr_gsd-ud-dev.conllu\); keep one"):
        conll.split_paths(tmp_path)
    f.write_text(UD.replace("\tPART\t", "\t_\t"))
    with pytest.raises(DataError, match=r"en_ewt-ud-train.conllu:5: the word \"n't\" has no UPOS tag"):
        conll.read(f)
    assert conll.read(f, tagged=False)[0].words == ["Do", "n't", "go", "."]  # predict reads words alone
    f.write_text(UD.replace("1\tHi\thi\tINTJ", "1 Hi hi INTJ"))
    with pytest.raises(DataError, match=r"en_ewt-ud-train.conllu:11: a CoNLL-U word line has 10 tab-separated columns"):
        conll.read(f)


def test_parquet_from_the_hub_names_its_class_ids(tmp_path):
    """The hub's `train-00000-of-00001.parquet` (or `train/0000.parquet`): ids named by the file's own ClassLabel
    names, errors name the row; without the metadata, ids stay ids for data.labels to name (data/tasks.py)."""
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    f = tmp_path / "hub" / "train-00000-of-00001.parquet"
    hub_parquet(f, {"tokens": [["-DOCSTART-"], ["Jan", "Smit", "flew"], ["to", "Oslo"]],
                     "ner_tags": [[0], [1, 2, 0], [0, 3]]}, {"ner_tags": names})
    assert [(s.words, s.tags, s.line) for s in conll.read(f)] == [
        (["Jan", "Smit", "flew"], ["B-PER", "I-PER", "O"], 2), (["to", "Oslo"], ["O", "B-LOC"], 3)]
    hub_parquet(tmp_path / "hub" / "validation" / "0000.parquet", {"tokens": [["a"]], "ner_tags": [[0]]}, {})
    assert {k: p.relative_to(tmp_path / "hub").as_posix() for k, p in conll.split_paths(tmp_path / "hub").items()} \
        == {"train": "train-00000-of-00001.parquet", "validation": "validation/0000.parquet"}
    assert conll.read(tmp_path / "hub" / "validation" / "0000.parquet")[0].tags == ["0"]  # no names: an id
    hub_parquet(f, {"tokens": [["a"], ["b"]], "ner_tags": [[0], [7]]}, {"ner_tags": names})
    with pytest.raises(DataError, match=r"train-00000-of-00001.parquet, row 2: 'ner_tags' holds an id past its 5 "
                                        r"class names: \[7\]"):
        conll.read(f)
    hub_parquet(f, {"tokens": [["a"], ["b"]], "ner_tags": [[1], [2]]}, {"ner_tags": ["O", "B-PER", "PER"]})
    with pytest.raises(DataError, match=r"train-00000-of-00001.parquet, row 2: tag 'PER' is not O or PREFIX-TYPE"):
        conll.read(f)
    f.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"train-00000-of-00001.parquet: not a readable Parquet file"):
        conll.read(f)
