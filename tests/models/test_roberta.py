"""RoBERTa's differences from BERT: positions past the padding row, its sequence head, and tokenizers that
give pre-split words their leading space (parity with transformers: tests/test_hf.py). Skipped without torch."""

import json

import numpy as np
import pytest
from flax import nnx

from jaxbatch import config, hf, run as run_lib
from jaxbatch.models import roberta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    torch.manual_seed(0)
    hf_cfg = transformers.RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=20, num_labels=3,
                                        type_vocab_size=1, pad_token_id=1)
    folder = tmp_path_factory.mktemp("roberta")
    transformers.RobertaForTokenClassification(hf_cfg).save_pretrained(folder)
    return folder


def test_the_sequence_head_drops_out_before_its_dense_layer_as_roberta_does():
    """Training mode: the same dropout key gives different logits from BERT's head on the same weights (BERT
    does not drop out the [CLS] vector before its pooler); evaluation gives the same."""
    from jaxbatch.models import bert

    cfg = config.build(["model.preset=roberta-tiny", "model.task=sequence", "model.num_labels=3",
                        "model.hidden_dropout=0.3"]).model
    ours = roberta.build(cfg, rngs=nnx.Rngs(params=0), dtype=np.float32)
    theirs = bert.BertClassifier(cfg, rngs=nnx.Rngs(params=0), dtype=np.float32,
                                  variant=bert.Variant(position_offset=2))
    nnx.update(theirs, nnx.state(ours, nnx.Param))
    ids, mask = np.arange(5, 21).reshape(2, 8), np.ones((2, 8), np.int32)
    np.testing.assert_array_equal(ours(ids, mask), theirs(ids, mask))
    train = [m(ids, mask, deterministic=False, rngs=nnx.Rngs(dropout=7)) for m in (ours, theirs)]
    assert np.abs(np.asarray(train[0]) - np.asarray(train[1])).max() > 1e-3


def test_a_folders_byte_level_tokenizer_adds_each_pre_split_words_space(tmp_path):
    """transformers 5 tokenizes pre-split words without their leading space unless told (HF's run_ner.py sets
    add_prefix_space for RoBERTa): the pieces of a word must be those of the word inside a sentence."""
    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(["John lives in Paris and works for Google ."] * 10, vocab_size=300, min_frequency=1,
                            special_tokens=list(roberta.SPECIAL_TOKENS))
    bpe.save_model(str(tmp_path))
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (tmp_path / "merges.txt").read_text().splitlines()[1:] if line]
    transformers.RobertaTokenizer(vocab=vocab, merges=merges).save_pretrained(tmp_path / "tok")
    tok = roberta.tokenizer(tmp_path / "tok")
    words = tok([["lives", "in", "Paris"]], is_split_into_words=True, add_special_tokens=False)["input_ids"][0]
    assert tok.convert_ids_to_tokens(words) == tok.tokenize(" lives in Paris")
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id) == (0, 1, 2)
    listed = roberta.tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "John", "Paris"])
    assert (listed.cls_token_id, listed.pad_token_id, listed.sep_token_id, listed.convert_tokens_to_ids("John")) == (
        0, 1, 2, 5)
    with pytest.raises(hf.CheckpointError, match="tokenizer: none of tokenizer.json, vocab.json"):
        roberta.tokenizer(tmp_path / "missing")


def test_positions_past_the_padding_rows_must_fit_the_table(hf_folder, tmp_path):
    with pytest.raises(config.ConfigError, match=r"data.seq_len=19 needs model.max_position_embeddings >= 21 "):
        run_lib.setup(run_lib.resolve(config.build([f"model.pretrained={hf_folder}", "data.seq_len=19",
                                                    "train.batch_size=8"])), abstract=True)
    tree = dict(hf.read_config(hf_folder), pad_token_id=0)
    (tmp_path / "config.json").write_text(json.dumps(tree))
    with pytest.raises(hf.CheckpointError, match="config.json: pad_token_id 0: RoBERTa's position table"):
        run_lib.hf_spec(tmp_path)
