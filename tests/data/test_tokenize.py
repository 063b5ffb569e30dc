import numpy as np

from jaxbatch import hf
from jaxbatch.data import tokenize
from jaxbatch.models import bert


def test_first_subtoken_alignment_and_truncation_count():
    tok = bert.tokenizer(hf.resolve("minilm-l6"))
    sents = [["Wolfsburg", "is", "big"], ["a"] * 10]
    enc = tokenize.encode_tagged(tok, sents, [[1, 0, 0], [2] * 10], seq_len=8)
    pieces = tok.tokenize("Wolfsburg")
    assert len(pieces) > 1  # a multi-piece word, so alignment is really tested
    row = enc.arrays["labels"][0]
    assert row[0] == -100 and row[1] == 1 and (row[2:1 + len(pieces)] == -100).all()
    assert row[1 + len(pieces)] == 0 and row[2 + len(pieces)] == 0
    ids = enc.arrays["input_ids"][0]
    assert ids[0] == tok.cls_token_id and ids[3 + len(pieces)] == tok.sep_token_id
    assert enc.truncated == 1 and enc.arrays["input_ids"][1][-1] == tok.sep_token_id
    assert (enc.arrays["labels"][1][1:7] == 2).all() and enc.arrays["attention_mask"][1].sum() == 8
    every = tokenize.encode_tagged(tok, sents[:1], [[1, 0, 0]], seq_len=8, label_all_subtokens=True)
    assert (every.arrays["labels"][0][1:1 + len(pieces)] == 1).all()


def test_sequence_encoding():
    tok = bert.tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "film"])
    enc = tokenize.encode_labelled(tok, [["good", "film"], ["unknownword"]], [1, 0], seq_len=6)
    np.testing.assert_array_equal(enc.arrays["input_ids"], [[2, 5, 6, 3, 0, 0], [2, 1, 3, 0, 0, 0]])
    np.testing.assert_array_equal(enc.arrays["labels"], [1, 0])
