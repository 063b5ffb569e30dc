"""Masked language modelling's inputs: HF's 15% / 80-10-10 masking, never of special tokens, drawn per
(step, global row) so resumes and host counts mask alike, and a validation split masked once."""

import dataclasses

import numpy as np
import pytest

from jaxbatch import config
from jaxbatch.data import masking, packing, pipeline, tasks
from jaxbatch.errors import DataError
from jaxbatch.losses import IGNORE_INDEX
from jaxbatch.models import bert

WORDS = [f"w{i}" for i in range(50)]


def masked_lm(**keys):
    """A ModelConfig with these mlm_* keys (what masking reads)."""
    return dataclasses.replace(config.ModelConfig(), **keys)


@pytest.fixture(scope="module")
def tokenizer():
    return bert.tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])


def rows(n: int, seq_len: int, seed: int = 0) -> dict:
    """n rows of [CLS] words [SEP] then padding, of random lengths."""
    rng = np.random.default_rng(seed)
    docs = [[2, *rng.integers(5, 55, rng.integers(1, seq_len - 1)), 3] for _ in range(n)]
    ids = np.zeros((n, seq_len), np.int32)
    for i, d in enumerate(docs):
        ids[i, : len(d)] = d
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32), "token_type_ids": np.zeros_like(ids)}


def test_the_collators_proportions_never_on_special_tokens_and_labels_the_chosen(tokenizer):
    how = masking.Masking.of(tokenizer, masked_lm(mlm_probability=0.15))
    assert (how.mask_id, how.vocab_size, how.special) == (4, 55, (0, 1, 2, 3, 4))
    plain = rows(3000, 48)
    cands = how.candidates(plain)
    maskable = (plain["attention_mask"] == 1) & (plain["input_ids"] > 4)
    np.testing.assert_array_equal(cands["labels"], np.where(maskable, plain["input_ids"], IGNORE_INDEX))
    out = how.apply(cands, [(7, 0, 0, r) for r in range(3000)])
    chosen = out["labels"] != IGNORE_INDEX
    assert not (chosen & ~maskable).any()
    np.testing.assert_array_equal(out["labels"][chosen], plain["input_ids"][chosen])  # the original ids
    np.testing.assert_array_equal(out["input_ids"][~chosen], plain["input_ids"][~chosen])  # the rest untouched
    n = maskable.sum()
    assert abs(chosen.sum() / n - 0.15) < 4 * np.sqrt(0.15 * 0.85 / n)
    picked = out["input_ids"][chosen]
    kept = picked == plain["input_ids"][chosen]
    to_mask = picked == 4
    # of the chosen: 80% [MASK], 10% random (which may draw the token itself or [MASK]: 1 in 55 each), 10% kept
    k = chosen.sum()
    shares = ((to_mask.mean(), 0.8 + 0.1 / 55), (kept.mean(), 0.1 + 0.1 / 55),
              ((~kept & ~to_mask).mean(), 0.1 * 53 / 55))
    for share, expected in shares:
        assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / k)
    again = how.apply(cands, [(7, 0, 0, r) for r in range(3000)])
    np.testing.assert_array_equal(again["input_ids"], out["input_ids"])
    other = how.apply(cands, [(7, 0, 1, r) for r in range(3000)])  # the next step draws anew
    assert (other["labels"] != out["labels"]).any()


def test_a_tokenizer_without_a_mask_token_is_one_line():
    with pytest.raises(DataError, match="mask token"):
        masking.Masking.of(None, masked_lm(mlm_probability=0.15))


@pytest.mark.parametrize("ramp", [False, True])
def test_any_number_of_hosts_masks_a_global_batch_as_one_does(tokenizer, ramp):
    """Two processes' local batches, joined in host order, equal one process's batch row for row: the same
    examples and the same masks, on the plain path and on the planned one (batch ramp-up)."""
    how = masking.Masking.of(tokenizer, masked_lm(mlm_probability=0.3))
    data = how.candidates(rows(40, 16))
    sizes = [8, 16, 16] if ramp else None
    one = list(pipeline.train_dataset(data, 16, 3, seed=1, batch_sizes=sizes, mask=how.train_batch(5)))
    two = [list(pipeline.train_dataset(data, 16, 3, seed=1, process_index=p, process_count=2, batch_sizes=sizes,
                                       mask=how.train_batch(5))) for p in range(2)]
    for step, whole in enumerate(one):
        assert (whole["labels"] != IGNORE_INDEX).any()
        for k in ("input_ids", "labels"):
            np.testing.assert_array_equal(np.concatenate([two[0][step][k], two[1][step][k]]), whole[k], err_msg=k)


def test_a_split_masked_once_masks_each_row_alike_however_its_rows_are_read(tokenizer):
    """The validation split's masks are drawn as its rows are read, by row: any batch, order or subset of rows
    gets the masks reading the whole split gives (every evaluation scores the same positions); the training
    split's labels are every candidate token, unmasked."""
    how = masking.Masking.of(tokenizer, masked_lm(mlm_probability=0.3))
    rng = np.random.default_rng(4)
    docs = [[2, *rng.integers(5, 55, rng.integers(1, 20)), 3] for _ in range(70)]
    grouped = packing.Grouped(packing.stream(docs), 16, pad_id=0)
    plain = {k: np.asarray(v) for k, v in grouped.items()}
    once = how.apply(how.candidates(plain), [(7, 1, r) for r in range(len(plain["input_ids"]))])
    masked, train = masking.Masked(how, grouped, seed=7), masking.Masked(how, grouped)
    for which in (np.arange(len(once["labels"])), np.asarray([5, 2, 40, 2]), np.arange(3, 30, 4)):
        for k in once:
            np.testing.assert_array_equal(masked[k][which], once[k][which], err_msg=k)
    np.testing.assert_array_equal(np.asarray(train["labels"]), how.candidates(plain)["labels"])
    np.testing.assert_array_equal(np.asarray(train["input_ids"]), plain["input_ids"])
    assert (once["labels"] != IGNORE_INDEX).any() and list(masked) == [*plain, "labels"]


def test_a_corpus_trains_a_masked_lm_and_evaluate_sees_the_validation_masks_training_saw(tokenizer, tmp_path):
    text = "\n\n".join(" ".join(WORDS[(7 * d + k) % 50] for k in range(3 + d % 11)) for d in range(60))
    (tmp_path / "corpus.txt").write_text(text)
    cfg = config.build(["data.name=text", f"data.data_dir={tmp_path / 'corpus.txt'}", "data.seq_len=16"]).data
    data = tasks.load(cfg, tokenizer, masked_lm=masked_lm(mlm_probability=0.25))
    assert data.task == "lm" and data.masking.probability == 0.25 and data.bytes_per_token is None
    ids = data.train["input_ids"]
    assert ids[0, 0] == tokenizer.cls_token_id and (ids == tokenizer.sep_token_id).sum() == (ids == 2).sum()
    assert not (data.train["labels"][data.train["attention_mask"] == 1] == IGNORE_INDEX).all()
    chosen = data.eval["labels"] != IGNORE_INDEX
    assert chosen.any() and (data.eval["input_ids"][chosen] == tokenizer.mask_token_id).any()
    split = tasks.load_split(cfg, tokenizer, "validation", masked_lm=masked_lm(mlm_probability=0.25))
    for key in data.eval:
        np.testing.assert_array_equal(split[key], data.eval[key], err_msg=key)
    (tmp_path / "sft.jsonl").write_text('{"prompt": "w1", "completion": "w2"}\n' * 20)
    sft = config.replace(config.build(["data.name=text"]), data__data_dir=str(tmp_path / "sft.jsonl")).data
    with pytest.raises(DataError, match="plain text"):
        tasks.load(sft, tokenizer, masked_lm=masked_lm())


def test_a_row_chooses_at_most_what_the_head_predicts(tokenizer, monkeypatch):
    """Past losses.mlm_predictions a row's later choices are dropped (inputs kept, no label): the head computes
    logits at that many positions only. At 15% of 128 that bound is 52, 8 standard deviations out."""
    from jaxbatch import losses

    assert losses.mlm_predictions(128, 0.15) == 52 and losses.mlm_predictions(16, 0.9) == 16
    how = masking.Masking.of(tokenizer, masked_lm(mlm_probability=0.5))
    cands = how.candidates(rows(200, 32))
    keys = [(3, 0, 0, r) for r in range(200)]
    free = how.apply(cands, keys)
    monkeypatch.setattr(masking, "mlm_predictions", lambda length, p: 2)
    capped = how.apply(cands, keys)
    for a, b, plain in zip(free["labels"], capped["labels"], cands["input_ids"]):
        first = np.flatnonzero(a != IGNORE_INDEX)[:2]
        np.testing.assert_array_equal(np.flatnonzero(b != IGNORE_INDEX), first)
    dropped = (free["labels"] != IGNORE_INDEX) & (capped["labels"] == IGNORE_INDEX)
    assert dropped.any()
    np.testing.assert_array_equal(capped["input_ids"][dropped], cands["input_ids"][dropped])


def test_whole_words_are_chosen_together_and_the_replacement_shares_are_the_configured_ones(tmp_path):
    """model.mlm_whole_word_mask: words as the collator finds them in the tokenizer's offsets (a token after a
    gap or a special token starts one: "don't" is one word), chosen by their first token's draw, at the same
    rate as single tokens would be; model.mlm_mask_replace_prob=1 shows every chosen token as the mask."""
    from jaxbatch.models import bert

    tokenizer = bert.tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "don", "'", "t", "go", "##ne", "a"])
    how = masking.Masking.of(tokenizer, masked_lm(mlm_probability=0.2, mlm_whole_word_mask=True,
                                                  mlm_mask_replace_prob=1.0, mlm_random_replace_prob=0.0))
    [(ids, starts)] = how.encode(tokenizer, ["don't gone a"])
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "don", "'", "t", "go", "##ne", "a", "[SEP]"]
    assert starts == [0, 1, 0, 0, 1, 0, 1, 0]
    (tmp_path / "c.txt").write_text("\n\n".join(["don't gone a a gone don't gone"] * 400))
    data_cfg = config.build(["data.name=text", f"data.data_dir={tmp_path / 'c.txt'}", "data.seq_len=24"]).data
    data = tasks.load(data_cfg, tokenizer, masked_lm=dataclasses.replace(
        masked_lm(), mlm_probability=0.2, mlm_whole_word_mask=True, mlm_mask_replace_prob=1.0,
        mlm_random_replace_prob=0.0))
    batch = data.masking.apply(data.train, [(0, 0, 0, r) for r in range(len(data.train["input_ids"]))])
    chosen = batch["labels"] != IGNORE_INDEX
    word = np.cumsum(data.train[masking.WORD_STARTS], 1)  # each token's word in its row (a row may begin mid-word)
    for r in range(len(chosen)):
        for w in np.unique(word[r][chosen[r]]):
            members = (word[r] == w) & (data.train["labels"][r] != IGNORE_INDEX)
            assert chosen[r][members].all(), (r, w)  # chosen whole
    np.testing.assert_array_equal(batch["input_ids"][chosen], tokenizer.mask_token_id)  # all shown as [MASK]
    starts = data.train[masking.WORD_STARTS].astype(bool)
    assert abs(chosen[starts].mean() - 0.2) < 0.03  # the words' rate
    assert chosen.sum() > 1.2 * chosen[starts].sum()  # and their other pieces with them


def test_a_split_with_nothing_to_mask_is_one_error_not_a_perplexity_of_one(tokenizer, tmp_path):
    (tmp_path / "c.txt").write_text("\n\n".join(["foo bar baz"] * 20))  # every word unknown: [UNK] is special
    cfg = config.build(["data.name=text", f"data.data_dir={tmp_path / 'c.txt'}", "data.seq_len=16"]).data
    with pytest.raises(DataError, match="the train split has no token the masks may choose"):
        tasks.load(cfg, tokenizer, masked_lm=masked_lm())
    with pytest.raises(DataError, match="the train split has no masked token to score"):  # evaluate --split train
        tasks.load_split(cfg, tokenizer, "train", masked_lm=masked_lm())


def test_line_by_line_gives_each_line_a_row_as_run_mlm_encodes_it(tokenizer, tmp_path):
    """data.line_by_line: every non-empty line of the corpus (blank lines between documents or not) is one row,
    encoded as HF's run_mlm --line_by_line does (`tokenizer(line, truncation=True, max_length=seq_len)`, padded):
    a long line is cut with its [SEP] kept, and the cut lines are counted. A causal LM or a labelled dataset is
    refused: it has no such mode."""
    lines = [" ".join(WORDS[(3 * i + k) % 50] for k in range(1 + (5 * i) % 17)) for i in range(90)]
    text = "\n".join(lines[:30]) + "\n\n  \n" + "\n".join(lines[30:60]) + "\n\n" + "\n\n".join(lines[60:])
    (tmp_path / "corpus.txt").write_text(text)
    cfg = config.build(["data.name=text", f"data.data_dir={tmp_path / 'corpus.txt'}", "data.seq_len=12",
                        "data.line_by_line=true"]).data
    data = tasks.load(cfg, tokenizer, masked_lm=masked_lm(mlm_whole_word_mask=True))
    shown = np.where(data.eval["labels"] != IGNORE_INDEX, data.eval["labels"], data.eval["input_ids"])  # unmasked
    got = np.concatenate([data.train["input_ids"], shown])
    want = tokenizer(lines, truncation=True, max_length=12, padding="max_length")
    assert len(got) == len(lines)  # every line is kept, in some split
    rows = {tuple(r) for r in got}
    assert rows == {tuple(r) for r in want["input_ids"]}
    mask = np.concatenate([data.train["attention_mask"], data.eval["attention_mask"]])
    assert mask.sum() == np.sum(want["attention_mask"])
    long = sum(len(tokenizer(line)["input_ids"]) > 12 for line in lines)
    assert long > 10 and sum(data.truncated.values()) == long
    assert (data.train[masking.WORD_STARTS].sum(1) == (data.train["attention_mask"].sum(1) - 2)).all()  # w-i words
    with pytest.raises(config.ConfigError, match="a causal LM packs its documents"):
        tasks.load(cfg, tokenizer)
    ner = config.build(["data.name=synthetic_ner", "data.line_by_line=true"]).data
    with pytest.raises(config.ConfigError, match="synthetic_ner is a token task"):
        tasks.load(ner, tokenizer)
