"""Documents packed into fixed rows: split across rows, padded, no target across a boundary."""

from jaxbatch.data import packing


def test_packing_splits_long_documents_and_pads():
    rows = packing.pack([list(range(1, 12)), [50, 51]], seq_len=4)
    assert rows["input_ids"].tolist() == [[1, 2, 3, 4], [6, 7, 8, 9], [11, 50, 51, 0]]
    assert rows["labels"].tolist() == [[2, 3, 4, 5], [7, 8, 9, 10], [-100, 51, -100, -100]]
    assert rows["positions"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 0, 1, 0]]
    assert rows["segment_ids"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 2, 2, 0]]
