"""Character-level text (data/text.py): the tokenizer a char-level run saves reads back in transformers."""

import pytest
from transformers import AutoTokenizer

from jaxbatch.data import text


def test_a_saved_char_tokenizer_is_an_hf_tokenizer_with_the_same_ids(tmp_path):
    sample = "First Citizen:\nBefore we proceed, hear me speak.\n\n  Ünïcödé ☃ \t tabs\r\n"
    tok = text.CharTokenizer.from_texts([sample])
    tok.save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    ids = hf(sample, add_special_tokens=False).input_ids
    assert len(hf) == len(tok) and ids == tok.encode(sample)
    assert hf.decode(ids) == sample == tok.decode(ids)
    assert text.CharTokenizer.load(tmp_path).chars == tok.chars
    with pytest.raises(Exception):  # a character outside the vocabulary is refused, never dropped
        hf("xyz", add_special_tokens=False)
