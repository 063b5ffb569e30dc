"""RoBERTa checkpoints: logits and training gradients equal PyTorch transformers (positions past the padding
row, RoBERTa's sequence head), export loads back in transformers, and pre-split words get their leading
space from the tokenizer. Skipped without torch."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import dotted
from jaxbatch import config, hf, run as run_lib, steps
from jaxbatch.models import roberta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CLASSES = {"token": "RobertaForTokenClassification", "sequence": "RobertaForSequenceClassification"}


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    torch.manual_seed(0)
    hf_cfg = transformers.RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=20, num_labels=3,
                                        type_vocab_size=1, pad_token_id=1)
    folders = {}
    for task, cls in CLASSES.items():
        folders[task] = tmp_path_factory.mktemp(task)
        getattr(transformers, cls)(hf_cfg).save_pretrained(folders[task])
    return folders


def _batch(seed):
    """Right-padded with RoBERTa's <pad> (1), as HF's collators pad; rows 18 long use every position row."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 99, (8, 18))
    mask = np.ones_like(ids)
    for row, length in enumerate([18, 7, 3, 12, 1, 18, 9, 2]):
        ids[row, length:], mask[row, length:] = 1, 0
    return ids, mask


def _ours(folder, task):
    spec = run_lib.resolve(config.build([f"model.pretrained={folder}", "train.batch_size=8", "data.seq_len=18",
                                         "mesh.data=2", "mesh.model=2", "mesh.fsdp=2"]))
    assert (spec.model.family, spec.model.task, spec.model.type_vocab_size) == ("roberta", task, 1)
    return run_lib.setup(spec)


def _torch(folder, task):
    return getattr(transformers, CLASSES[task]).from_pretrained(folder, attn_implementation="eager").eval()


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_logits_and_gradients_equal_pytorch_and_export_loads_back(task, hf_folders, tmp_path):
    run = _ours(hf_folders[task], task)
    assert run.load_report.new == [] and run.load_report.unexpected == []
    ids, mask = _batch(1)
    model = nnx.merge(run.graphdef, run.state.params)
    ours = np.asarray(jax.jit(lambda i, m: model(i, m))(ids, mask))
    theirs_model = _torch(hf_folders[task], task)
    with torch.no_grad():
        theirs = theirs_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask == 1 if task == "token" else slice(None)  # HF gives padding the padding row's position: no output
    assert np.abs(ours[real] - theirs[real]).max() < 1e-5

    labels = np.random.default_rng(2).integers(0, 3, ids.shape if task == "token" else ids.shape[:1])
    if task == "token":
        labels = np.where(mask == 1, labels, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
             "labels": labels.astype(np.int32)}
    sums, grads = jax.jit(steps.make_grad_fn(roberta.FAMILY, run.spec.model, run.graphdef))(
        run.state.params, batch, None, 1.0)
    loss = theirs_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        labels=torch.tensor(labels)).loss
    loss.backward()
    assert float(sums["loss_sum"] / sums["weight"]) == pytest.approx(float(loss), rel=1e-5)
    named = dict(theirs_model.named_parameters())
    flat = {dotted(p): np.asarray(g) / float(sums["weight"]) for p, g in jax.tree_util.tree_leaves_with_path(grads)}
    key_map = roberta.hf_key_map(run.spec.model)
    assert sorted(key_map) == sorted(flat)
    for ours_name, (name, how) in key_map.items():
        mine = hf.to_theirs(flat[ours_name], how)
        expected = named[roberta.FAMILY.hf.tensor_name(name, run.spec.model)].grad.numpy()
        np.testing.assert_allclose(mine, expected.reshape(mine.shape), rtol=1e-3, atol=1e-6, err_msg=ours_name)

    out = hf.export(run.state.params, run.spec.model, tmp_path / "out", label_names=["a", "b", "c"])
    written = json.loads((out / "config.json").read_text())
    assert (written["model_type"], written["architectures"], written["pad_token_id"]) == ("roberta", [CLASSES[task]], 1)
    with torch.no_grad():
        again = _torch(out, task)(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_array_equal(again, theirs)


def test_the_sequence_head_drops_out_before_its_dense_layer_as_roberta_does():
    """Training mode: the same dropout key gives different logits from BERT's head on the same weights (BERT
    does not drop out the [CLS] vector before its pooler); evaluation gives the same."""
    from jaxbatch.models import bert

    cfg = config.build(["model.preset=roberta-tiny", "model.task=sequence", "model.num_labels=3",
                        "model.hidden_dropout=0.3"]).model
    ours = roberta.build(cfg, rngs=nnx.Rngs(params=0), dtype=np.float32)
    theirs = bert.BertClassifier(cfg, rngs=nnx.Rngs(params=0), dtype=np.float32, position_offset=2)
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


def test_positions_past_the_padding_rows_must_fit_the_table(hf_folders, tmp_path):
    with pytest.raises(config.ConfigError, match=r"data.seq_len=19 needs model.max_position_embeddings >= 21 "):
        run_lib.setup(run_lib.resolve(config.build([f"model.pretrained={hf_folders['token']}", "data.seq_len=19",
                                                    "train.batch_size=8"])), abstract=True)
    tree = dict(hf.read_config(hf_folders["token"]), pad_token_id=0)
    (tmp_path / "config.json").write_text(json.dumps(tree))
    with pytest.raises(hf.CheckpointError, match="config.json: pad_token_id 0: RoBERTa's position table"):
        run_lib.hf_spec(tmp_path)
