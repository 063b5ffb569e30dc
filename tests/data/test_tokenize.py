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


def test_text_pairs_follow_the_tokenizers_template_and_are_cut_longest_first():
    """BERT: [CLS] a [SEP] b [SEP], token types 0 then 1, exactly what the tokenizer gives for the pair (as
    Hugging Face's GLUE script encodes it), padded on the right; the longer text loses pieces first and the
    cut is counted. RoBERTa: <s> a </s></s> b </s> and no token types."""
    from jaxbatch.models import roberta

    tok = bert.tokenizer(hf.resolve("minilm-l6"))
    firsts, seconds = [["the", "cat", "sat", "on", "the", "mat"], ["hi"]], [["a", "dog"], ["there"]]
    enc = tokenize.encode_labelled(tok, firsts, [1, 0], seq_len=8, pairs=seconds)
    theirs = tok([" ".join(firsts[0])], [" ".join(seconds[0])], truncation="longest_first", max_length=8)
    np.testing.assert_array_equal(enc.arrays["input_ids"][0], theirs["input_ids"][0])
    np.testing.assert_array_equal(enc.arrays["token_type_ids"][0], theirs["token_type_ids"][0])
    assert tok.convert_ids_to_tokens(enc.arrays["input_ids"][0].tolist()) == [
        "[CLS]", "the", "cat", "sat", "[SEP]", "a", "dog", "[SEP]"]
    assert enc.arrays["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert enc.arrays["attention_mask"][1].tolist() == [1] * 5 + [0] * 3 and enc.truncated == 1
    assert enc.arrays["input_ids"][1, 5:].tolist() == [tok.pad_token_id] * 3
    rob = roberta.tokenizer(["[PAD]", "hi", "there"])
    enc = tokenize.encode_labelled(rob, [["hi"]], [0], seq_len=8, pairs=[["there"]])
    assert rob.convert_ids_to_tokens(enc.arrays["input_ids"][0].tolist()) == [
        "<s>", "hi", "</s>", "</s>", "there", "</s>", "<pad>", "<pad>"]
    assert not enc.arrays["token_type_ids"].any() and enc.truncated == 0


def test_a_causal_models_tokenizer_reads_each_text_as_written_padded_with_eos():
    """A tokenizer without [CLS] (GPT-2's, LLaMA's) is given each text as one string with its own template (a BOS
    where it adds one), as run_glue encodes it: not word by word, which a BPE tokenizer would read each with a
    leading space. Without a pad token, rows are padded with EOS; what is cut from each text is counted."""
    import pytest

    from conftest import bpe_tokenizer
    from jaxbatch.errors import DataError

    texts = ["a good film", "a bad film", "the plot is thin and the film is long"] * 20
    for bos in (False, True):
        tok = bpe_tokenizer(texts, bos=bos)
        words, long = ["a", "good", "film"], ["the", "plot", "is", "thin"] * 5
        enc = tokenize.encode_labelled(tok, [words, long], [1, 0], seq_len=8)
        want = tok("a good film")["input_ids"]
        assert want[0] == (tok.bos_token_id if bos else tok.encode("a")[0]) and len(want) < 8
        np.testing.assert_array_equal(enc.arrays["input_ids"][0], want + [tok.eos_token_id] * (8 - len(want)))
        np.testing.assert_array_equal(enc.arrays["attention_mask"][0], [1] * len(want) + [0] * (8 - len(want)))
        whole = tok(" ".join(long))["input_ids"]
        np.testing.assert_array_equal(enc.arrays["input_ids"][1], whole[:8])
        assert enc.truncated == 1 and list(enc.cut) == [0, len(whole) - 8]
        pair = tokenize.encode_labelled(tok, [words], [1], seq_len=12, pairs=[["bad", "film"]])
        got = tok("a good film", "bad film")["input_ids"]
        np.testing.assert_array_equal(pair.arrays["input_ids"][0][:len(got)], got)
    tok.eos_token = None
    with pytest.raises(DataError, match="neither a pad nor an EOS token"):
        tokenize.encode_labelled(tok, [words], [1], seq_len=8)


def test_a_causal_models_tokenizer_tags_words_after_a_space_with_its_own_special_tokens(tmp_path):
    """Token classification with a tokenizer without [CLS]: its own template (a BOS where it adds one), the label
    on each word's first piece, EOS padding, a cut counted; a GPT-2 tokenizer class (no prefix space by default)
    is loaded again to read every word after a space, as HF's run_ner loads it."""
    import transformers

    from conftest import bpe_tokenizer

    texts = ["the cat sat on the mat", "a dog ran far"] * 20
    for bos in (False, True):
        tok = bpe_tokenizer(texts, bos=bos)
        assert tokenize.tagged_specials(tok) == int(bos) and tokenize.for_words(tok) is tok  # built, not loaded
        enc = tokenize.encode_tagged(tok, [["the", "cat", "sat"], ["a", "dog", "ran", "far"] * 3],
                                     [[1, 2, 3], [4] * 12], seq_len=10)
        pieces = tok([["the", "cat", "sat"]], is_split_into_words=True)
        first = [pieces.word_ids(0).index(w) for w in range(3)]
        row = pieces["input_ids"][0]
        np.testing.assert_array_equal(enc.arrays["input_ids"][0], row + [tok.eos_token_id] * (10 - len(row)))
        assert [int(enc.arrays["labels"][0, j]) for j in first] == [1, 2, 3]
        assert (enc.arrays["labels"][0] >= 0).sum() == 3 and enc.truncated == 1
        assert enc.arrays["input_ids"][0, 0] == (tok.bos_token_id if bos else row[0])
    core = bpe_tokenizer(texts).backend_tokenizer
    transformers.GPT2TokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>").save_pretrained(tmp_path)
    plain = transformers.AutoTokenizer.from_pretrained(tmp_path)
    words = tokenize.for_words(plain)
    assert plain.add_prefix_space is False and words.add_prefix_space is True
    def first_piece(t):
        return t.convert_ids_to_tokens(t(["cat", "sat"], is_split_into_words=True)["input_ids"])[0]

    assert first_piece(words).startswith("Ġ") and not first_piece(plain).startswith("Ġ")
    assert tokenize.for_words(words) is words  # it adds the space already
    wordpiece = transformers.AutoTokenizer.from_pretrained(hf.resolve("minilm-l6"))
    assert tokenize.for_words(wordpiece) is wordpiece  # WordPiece splits words itself: not loaded again
