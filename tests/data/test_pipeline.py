import numpy as np

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


def test_two_hosts_read_disjoint_slices_covering_the_global_batches():
    single = _ids(pipeline.train_dataset(_arrays(), 20, num_steps=5, seed=1))
    hosts = [_ids(pipeline.train_dataset(_arrays(), 20, num_steps=5, seed=1, process_index=p, process_count=2))
             for p in range(2)]
    for step in range(5):
        a, b = hosts[0][step], hosts[1][step]
        assert len(a) == len(b) == 10 and not set(a) & set(b)
        assert sorted(a + b) == sorted(single[step])
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
