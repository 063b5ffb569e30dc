"""Documents packed into fixed rows: split across rows, padded, no target across a boundary."""

import numpy as np

from jaxbatch.data import packing


def test_packing_splits_long_documents_and_pads():
    rows = packing.pack([list(range(1, 12)), [50, 51]], seq_len=4)
    assert rows["input_ids"].tolist() == [[1, 2, 3, 4], [6, 7, 8, 9], [11, 50, 51, 0]]
    assert rows["labels"].tolist() == [[2, 3, 4, 5], [7, 8, 9, 10], [-100, 51, -100, -100]]
    assert rows["positions"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 0, 1, 0]]
    assert rows["segment_ids"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 2, 2, 0]]


def test_tokens_only_read_are_not_trained_on_even_across_rows():
    """A token flagged untrained (a prompt, a chat's user turns) is no target; the first completion token is
    predicted from the prompt's last; the flags travel with a document cut across rows (its second part
    starts a new segment, as plain packing does), and a document may alternate read and trained spans."""
    trained = [[False] * 3 + [True] * 4, [False, False, True]]
    rows = packing.pack([[1, 2, 3, 4, 5, 6, 7], [20, 21, 22]], seq_len=4, trained=trained)
    assert rows["input_ids"].tolist() == [[1, 2, 3, 4], [6, 7, 20, 21]]  # rows of 5 tokens, inputs their first 4
    assert rows["labels"].tolist() == [[-100, -100, 4, 5], [7, -100, -100, 22]]
    turns = packing.pack([[1, 2, 3, 4, 5, 6, 7]], seq_len=6, trained=[[False, True, True, False, False, True, True]])
    assert turns["labels"].tolist() == [[2, 3, -100, -100, 6, 7]]
    plain = packing.pack([[1, 2, 3, 4, 5, 6, 7], [20, 21, 22]], seq_len=4)
    assert plain["labels"].tolist() == [[2, 3, 4, 5], [7, -100, 21, 22]]


def test_a_document_starting_a_row_and_an_empty_one_are_numbered_as_before():
    """The flat-array packing numbers segments as the row-by-row loop did: a document that starts a row after
    the previous row closed on a document's end is segment 2, and an empty document takes a number too."""
    rows = packing.pack([[1, 2, 3, 4, 5], [], [7, 8]], seq_len=4)
    assert rows["input_ids"].tolist() == [[1, 2, 3, 4], [7, 8, 0, 0]]
    assert rows["segment_ids"].tolist() == [[1, 1, 1, 1], [3, 3, 0, 0]]
    assert rows["labels"].tolist() == [[2, 3, 4, 5], [8, -100, -100, -100]]
    assert rows["positions"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]  # padding counts on, never attended
    empty = packing.pack([], seq_len=4)
    assert all(v.shape == (0, 4) for v in empty.values())


def test_rows_laid_a_chunk_at_a_time_are_the_rows_laid_at_once():
    """600 random corpora (empty documents, documents that fill a row exactly, targets or none): rows laid 1, 2 or 3
    at a time (as into the token cache's files) equal those laid at once, into arrays from `alloc`."""
    rng = np.random.default_rng(0)
    for case in range(600):
        docs = [rng.integers(1, 100, size=int(rng.integers(0, 14))).tolist() for _ in range(int(rng.integers(0, 8)))]
        trained = [rng.random(len(d)) < 0.7 for d in docs] if case % 2 else None
        seq = int(rng.integers(1, 9))
        whole = packing.pack(docs, seq, trained=trained)
        for chunk in (1, 2, 3):
            laid = {}
            got = packing.pack(docs, seq, trained=trained, chunk_rows=chunk,
                               alloc=lambda name, shape, dtype: laid.setdefault(name, np.full(shape, -7, dtype)))
            assert set(got) == set(whole) and all(got[k] is laid[k] for k in got)
            for k in whole:
                np.testing.assert_array_equal(got[k], whole[k], err_msg=f"{k} {case} {chunk}")
