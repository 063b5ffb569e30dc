import grain
import numpy as np
import pytest

from jaxbatch.data import pipeline


def _arrays(n=100):
    return {"input_ids": np.arange(n, dtype=np.int32)[:, None].repeat(4, 1),
            "labels": np.arange(n, dtype=np.int32)}


def _ids(batches):
    return [b["labels"].tolist() for b in batches]


def test_epochs_are_permutations_and_reshuffled():
    batches = _ids(pipeline.train_dataset(_arrays(), 20, num_steps=10, seed=3))
    assert len(batches) == 10
    epoch1, epoch2 = sum(batches[:5], []), sum(batches[5:], [])
    assert sorted(epoch1) == list(range(100)) == sorted(epoch2)
    assert epoch1 != epoch2 and epoch1 != list(range(100))


def test_two_hosts_read_the_halves_of_one_hosts_global_batches():
    """Joined in host order (as `to_global` joins them), the hosts' batches are one host's, row for row: each row
    meets the dropout mask of its place whatever the number of hosts."""
    single = _ids(pipeline.train_dataset(_arrays(), 20, num_steps=5, seed=1))
    hosts = [_ids(pipeline.train_dataset(_arrays(), 20, num_steps=5, seed=1, process_index=p, process_count=2))
             for p in range(2)]
    for step in range(5):
        a, b = hosts[0][step], hosts[1][step]
        assert len(a) == len(b) == 10 and a + b == single[step]
    assert sorted(sum(sum(hosts, []), [])) == list(range(100))


def test_iterator_resume_mid_epoch_is_exact():
    full = _ids(pipeline.train_dataset(_arrays(), 8, num_steps=30, seed=7))
    it = iter(pipeline.train_dataset(_arrays(), 8, num_steps=30, seed=7))
    first = [next(it)["labels"].tolist() for _ in range(17)]
    saved = it.get_state()
    resumed = iter(pipeline.train_dataset(_arrays(), 8, num_steps=30, seed=7))
    resumed.set_state(saved)
    rest = [b["labels"].tolist() for b in resumed]
    assert first + rest == full


def test_eval_batches_cover_every_example_once_with_ignored_padding():
    arrays = _arrays(45)
    seen = []
    for batch, real in pipeline.eval_batches(arrays, 20):
        assert batch["labels"].shape == (20,)
        seen += batch["labels"][:real].tolist()
        assert (batch["labels"][real:] == -100).all()
    assert seen == list(range(45))


def test_padding_fraction():
    stats = pipeline.padding_stats({"attention_mask": np.array([[1, 1, 0, 0], [1, 1, 1, 1]])})
    assert stats.padding_fraction == 0.25


def test_labelled_per_row_counts_labels_not_ignored():
    labels = np.array([[1, -100, 2, -100], [-100, -100, -100, -100], [0, 0, 0, -100]])
    assert pipeline.labelled_per_row({"labels": labels}) == 5 / 3
    assert pipeline.labelled_per_row({"labels": np.array([1, 0, -100, 1])}) == 0.75  # one label per example


def _varied(n=400, seq=64, seed=0):
    lengths = np.random.default_rng(seed).integers(3, seq + 1, n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": mask * 7, "attention_mask": mask, "labels": np.arange(n, dtype=np.int32)}, lengths


def test_bucket_lengths_pad_the_examples_least():
    """The boundaries from the examples' lengths are the best of every choice of at most k multiples of 8 (by
    brute force), the longest holding the longest example; without lengths, seq_len / 2^k."""
    import itertools

    assert pipeline.bucket_lengths(64, 3) == [16, 32, 64]
    rng = np.random.default_rng(0)
    for seq_len, k, lengths in [(64, 3, rng.integers(3, 65, 400)), (100, 2, rng.integers(1, 60, 50)),
                                (128, 4, np.concatenate([rng.integers(20, 30, 90), rng.integers(90, 100, 10)])),
                                (64, 3, np.full(7, 12))]:
        bounds = pipeline.bucket_lengths(seq_len, k, lengths)
        padded = lambda b: int(np.asarray(b)[np.searchsorted(b, lengths)].sum())  # noqa: E731
        candidates = sorted({min(c, seq_len) for c in range(8, seq_len + 8, 8)})
        best = min(padded(list(c)) for m in range(1, k + 1) for c in itertools.combinations(candidates, m)
                   if c[-1] >= lengths.max())
        assert len(bounds) <= k and bounds[-1] >= lengths.max() > bounds[-1] - 8 and padded(bounds) == best
    assert pipeline.bucket_lengths(64, 3, np.full(7, 12)) == [16]


def test_length_buckets_cut_padding_and_keep_every_example_fitting():
    arrays, lengths = _varied()
    batches = list(pipeline.train_dataset(arrays, 16, num_steps=25, seed=0, num_buckets=3))
    assert {b["input_ids"].shape[1] for b in batches} == set(pipeline.bucket_lengths(64, 3, lengths))
    for b in batches:  # no example is cut: each batch's length holds all its examples' tokens
        assert (lengths[b["labels"]] <= b["input_ids"].shape[1]).all()
        assert (b["attention_mask"].sum(1) == lengths[b["labels"]]).all()
    # leftovers move up a bucket, so only the longest bucket can drop (< 16, here 0 as 16 divides 400)
    epoch = sum((b["labels"].tolist() for b in batches), [])
    assert sorted(epoch) == list(range(400))
    assert pipeline.padding_stats(arrays, 3).padding_fraction < 0.6 * pipeline.padding_stats(arrays).padding_fraction


def test_bucketed_hosts_join_into_one_hosts_batches_and_resume_exactly():
    arrays, _ = _varied()
    single = list(pipeline.train_dataset(arrays, 16, 10, seed=2, num_buckets=2))
    hosts = [list(pipeline.train_dataset(arrays, 16, 10, seed=2, process_index=p, process_count=2, num_buckets=2))
             for p in range(2)]
    for s, a, b in zip(single, *hosts):
        assert a["input_ids"].shape == b["input_ids"].shape == (8, s["input_ids"].shape[1])
        for k in s:
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), s[k])
    it = iter(pipeline.train_dataset(arrays, 16, 10, seed=2, num_buckets=2))
    head = [next(it)["labels"].tolist() for _ in range(4)]
    again = iter(pipeline.train_dataset(arrays, 16, 10, seed=2, num_buckets=2))
    again.set_state(it.get_state())
    assert head + [b["labels"].tolist() for b in again] == [b["labels"].tolist() for b in single]


def test_batches_are_grains_shuffle_of_the_examples():
    """Batches gathered by index are the batches of grain shuffling the examples themselves (what earlier
    versions did, example by example): runs and checkpoints from before train on the same data; the second of
    two hosts reads the second half of each."""
    arrays = _arrays()
    rows = grain.MapDataset.source([{k: v[i] for k, v in arrays.items()} for i in range(100)])
    examples = rows.shuffle(seed=5).repeat(2)[:160].batch(16).to_iter_dataset()
    gathered = pipeline.train_dataset(arrays, 16, num_steps=10, seed=5, process_index=1, process_count=2)
    assert _ids(gathered) == [ids[8:] for ids in _ids(examples)]


def test_too_few_examples_for_one_batch_says_what_it_counted():
    with pytest.raises(pipeline.DataError, match=r"^the training split has 3 examples, fewer than one global batch of 4"):
        pipeline.train_dataset(_arrays(3), 4, num_steps=1, seed=0)
    rows = dict(_arrays(1), segment_ids=np.ones((1, 4), np.int32))  # text is packed into rows of seq_len tokens
    with pytest.raises(pipeline.DataError, match=r"^the training split has 1 row of 4 tokens, fewer than one global"):
        pipeline.train_dataset(rows, 2, num_steps=1, seed=0)


def test_a_length_cut_cuts_per_token_arrays_and_never_a_multi_label_heads_classes():
    """Buckets cut every per-token array to the batch's length; float labels as wide as seq_len are a
    multi-label head's classes (here 8 classes, seq_len 8) and stay whole, while token labels (int) are cut."""
    ids = np.arange(32, dtype=np.int32).reshape(4, 8)
    classes = np.eye(4, 8, dtype=np.float32)
    cut = pipeline.take({"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": classes}, [2, 0], 3)
    np.testing.assert_array_equal(cut["input_ids"], ids[[2, 0], :3])
    np.testing.assert_array_equal(cut["attention_mask"], np.ones((2, 3)))
    np.testing.assert_array_equal(cut["labels"], classes[[2, 0]])
    assert pipeline.take({"input_ids": ids, "labels": ids}, [1], 5)["labels"].shape == (1, 5)
    assert pipeline.take({"input_ids": ids, "labels": classes}, slice(None))["labels"].shape == (4, 8)
