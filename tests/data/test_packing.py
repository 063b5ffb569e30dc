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


def _reference(docs, seq_len, trained=None):
    """Packing written plainly, a row and a position at a time (as the row-by-row loop these arrays replaced did):
    segments count the documents begun in the row (+1 past the first row), positions restart at each change."""
    width, begins, stream, flags = seq_len + 1, [], [], []
    for d, doc in enumerate(docs):
        begins.append(len(stream))
        stream += list(doc)
        flags += [True] * len(doc) if trained is None or trained[d] is None else list(trained[d])
    rows = {k: [] for k in ("input_ids", "labels", "segment_ids", "positions")}
    for first in range(0, len(stream), width):
        tok, seg, pos, lab = [], [], [], []
        for p in range(first, first + width):
            real = p < len(stream)
            tok.append(stream[p] if real else 0)
            seg.append((sum(first <= b <= p for b in begins) + (first > 0)) if real else 0)
            pos.append(pos[-1] + 1 if pos and seg[-1] == seg[-2] else 0)
            if len(seg) > 1:
                lab.append(tok[-1] if real and seg[-1] == seg[-2] and flags[p] else -100)
        for k, v in zip(rows, (tok[:-1], lab, seg[:-1], pos[:-1])):
            rows[k].append(v)
    return {k: np.asarray(v, np.int32).reshape(-1, seq_len) for k, v in rows.items()}


def test_rows_computed_as_they_are_read_are_the_rows_packed_plainly():
    """600 random corpora (empty documents, documents that fill a row exactly, targets (None: all) or none, ids past
    uint16): rows read whole, one at a time, by index arrays, slices and cut to fewer tokens equal the plain
    packing's; the stream keeps 2 bytes a token while ids fit (4 past them), and a bit a token only when some token
    is only read."""
    rng = np.random.default_rng(0)
    for case in range(600):
        high = 70_000 if case % 3 == 0 else 100
        docs = [rng.integers(1, high, size=int(rng.integers(0, 14))).tolist() for _ in range(int(rng.integers(0, 8)))]
        trained = [None if rng.random() < 0.3 else rng.random(len(d)) < 0.7 for d in docs] if case % 2 else None
        seq = int(rng.integers(1, 9))
        want = _reference(docs, seq, trained)
        arrays = packing.stream(docs, trained)
        assert arrays["tokens"].dtype == (np.int32 if max(sum(docs, [0])) >= 1 << 16 else np.uint16)
        assert ("targets" in arrays) == (trained is not None and not all(t is None or t.all() for t in trained))
        rows = packing.Packed(arrays, seq)
        assert list(rows) == list(want) and all(rows[k].shape == want[k].shape for k in want)
        some = rng.integers(0, max(len(want["labels"]), 1), size=3) if len(want["labels"]) else np.zeros(0, int)
        for k in want:
            np.testing.assert_array_equal(np.asarray(rows[k]), want[k], err_msg=f"{k} {case}")
            np.testing.assert_array_equal(rows[k][some], want[k][some], err_msg=f"{k} {case}")
            np.testing.assert_array_equal(rows[k][some, :2], want[k][some, :2], err_msg=f"{k} {case}")
            np.testing.assert_array_equal(rows[k][1:], want[k][1:], err_msg=f"{k} {case}")
            for r in range(len(want[k])):
                np.testing.assert_array_equal(rows[k][r], want[k][r], err_msg=f"{k} {case}")


def test_an_encoders_rows_are_the_documents_cut_every_seq_len_or_one_a_row():
    """run_mlm's two layouts, read from one stream: the documents end to end cut every seq_len tokens with nothing
    dropped (the last row padded), or (per_document, its --line_by_line) each document a row of its own, padded;
    a mark (where words start) rides with its tokens, 0 in padding."""
    docs, starts = [[2, 10, 11, 3], [2, 12, 3], [2, 13, 14, 15, 3]], [[0, 1, 0, 0], None, [0, 1, 1, 0, 0]]
    arrays = packing.stream(docs, marks={"word_starts": starts})
    grouped = packing.Grouped(arrays, 5, pad_id=0)
    assert list(grouped) == ["input_ids", "attention_mask", "token_type_ids", "word_starts"]
    assert grouped["input_ids"].tolist() == [[2, 10, 11, 3, 2], [12, 3, 2, 13, 14], [15, 3, 0, 0, 0]]
    assert grouped["attention_mask"].tolist() == [[1] * 5, [1] * 5, [1, 1, 0, 0, 0]]
    assert grouped["word_starts"].tolist() == [[0, 1, 0, 0, 1], [1, 1, 0, 1, 1], [0, 0, 0, 0, 0]]
    assert not np.asarray(grouped["token_type_ids"]).any()
    lines = packing.Grouped(arrays, 6, pad_id=9, per_document=True)
    assert lines["input_ids"].tolist() == [[2, 10, 11, 3, 9, 9], [2, 12, 3, 9, 9, 9], [2, 13, 14, 15, 3, 9]]
    assert lines["word_starts"][[2, 0]].tolist() == [[0, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0]]


def test_an_encoders_rows_read_in_any_way_are_the_rows_laid_plainly():
    """300 random corpora (empty documents, ids past uint16, a mark or none): both layouts' rows read whole, by
    index arrays, negative indices, boolean masks and slices equal rows laid out plainly a document at a time."""
    rng = np.random.default_rng(1)
    for case in range(300):
        high = 70_000 if case % 4 == 0 else 100
        docs = [rng.integers(1, high, size=int(rng.integers(0, 9))).tolist() for _ in range(int(rng.integers(0, 8)))]
        marks = [None if rng.random() < 0.2 else (rng.random(len(d)) < 0.5).astype(int) for d in docs]
        seq, pad = int(rng.integers(1, 10)), int(rng.integers(0, 3))
        arrays = packing.stream(docs, marks={"m": marks} if case % 2 else None)
        flat = sum(docs, [])
        flat_marks = sum([[1] * len(d) if m is None else list(m) for d, m in zip(docs, marks)], [])
        for per_document in (False, True):
            if per_document:
                seq = max([seq, *map(len, docs)])  # a line is cut to seq_len as it is encoded
                spans = [(b, len(d)) for b, d in zip(np.cumsum([0] + [len(d) for d in docs]), docs)]
            else:
                spans = [(f, min(seq, len(flat) - f)) for f in range(0, len(flat), seq)]
            want = {k: np.zeros((len(spans), seq), np.int32) for k in ("input_ids", "attention_mask", "m")}
            want["input_ids"][:] = pad
            for r, (first, length) in enumerate(spans):
                want["input_ids"][r, :length] = flat[first: first + length]
                want["attention_mask"][r, :length] = 1
                want["m"][r, :length] = flat_marks[first: first + length]
            rows = packing.Grouped(arrays, seq, pad, per_document)
            assert len(rows["input_ids"]) == len(spans) and ("m" in rows) == bool(case % 2)
            pick = rng.integers(-len(spans), len(spans), size=4) if spans else np.zeros(0, int)
            chosen = rng.random(len(spans)) < 0.5
            for k in rows:
                expect = want[k] if k != "token_type_ids" else np.zeros_like(want["input_ids"])
                np.testing.assert_array_equal(np.asarray(rows[k]), expect, err_msg=f"{k} {case}")
                np.testing.assert_array_equal(rows[k][pick], expect[pick], err_msg=f"{k} {case}")
                np.testing.assert_array_equal(rows[k][chosen], expect[chosen], err_msg=f"{k} {case}")
                np.testing.assert_array_equal(rows[k][1::2, :3], expect[1::2, :3], err_msg=f"{k} {case}")
                np.testing.assert_array_equal(rows[k][expect > 1], expect[expect > 1], err_msg=f"{k} {case}")


def test_bits_are_packed_a_block_at_a_time_as_packbits_packs_them_whole():
    """A corpus' marks are written a block of bits at a time (never a bool a token at once): any block size, any
    pieces (empty ones, ones that end mid-byte) give np.packbits' bytes of the whole."""
    rng = np.random.default_rng(2)
    for case in range(200):
        pieces = [rng.random(int(rng.integers(0, 30))) < 0.5 for _ in range(int(rng.integers(0, 9)))]
        whole = np.packbits(np.concatenate(pieces or [np.zeros(0, bool)]))
        out = np.full(len(whole), 77, np.uint8)
        got = packing._packed_bits(iter(pieces), out, block=int(rng.integers(1, 40)))
        np.testing.assert_array_equal(got, whole, err_msg=str(case))
