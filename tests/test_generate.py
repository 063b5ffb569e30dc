"""KV-cache generation equals recomputing the whole sequence; sampling filters; the CLI end to end."""

import functools
import json
from collections import Counter
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxbatch import cli, config, generate
from jaxbatch.models import decoder

read = generate.generation_configs  # the generation_config.json files of folders, read once


def _model(preset, *extra):
    cfg = config.build([f"model.preset={preset}", "model.vocab_size=50", "model.task=lm", "model.hidden_size=32",
                        "model.num_heads=4", "model.num_layers=2", "model.intermediate_size=64", *extra]).model
    return nnx.split(decoder.Decoder(cfg, rngs=nnx.Rngs(params=1)))


def _recompute_greedy(graphdef, params, prompts, n, width=16):
    """Greedy tokens by running each whole sequence again for every new token, at one compiled width: under
    the causal mask the zeros after position t do not change its logits (tests/models/test_decoder.py)."""
    model = nnx.merge(graphdef, params)
    forward = jax.jit(lambda x: model(x, jnp.arange(width)[None], jnp.ones((1, width), jnp.int32)))
    out = []
    for prompt in prompts:
        ids = list(prompt)
        for _ in range(n):
            logits = forward(jnp.asarray([ids + [0] * (width - len(ids))]))
            ids.append(int(jnp.argmax(logits[0, len(ids) - 1])))
        out.append(ids[len(prompt):])
    return out


@pytest.mark.parametrize("preset", ["gpt-tiny", "llama-tiny", "llama-tiny:model.sliding_window=3",
                                    "llama-tiny:model.sliding_window=8",
                                    "gemma3-tiny:model.sliding_window=3:model.sliding_window_pattern=2",
                                    "gemma3-tiny:model.qk_norm=false:model.attention_softcap=1:model.logit_softcap=2"])
@pytest.mark.parametrize("heads_first", [True, False])
def test_kv_cache_greedy_equals_full_recompute_for_a_ragged_batch(preset, heads_first, monkeypatch):
    """The window: a left-padded prompt's positions count back too, and a windowed layer keeps a ring of the
    window's slots when the sequence (6 prompt + 7 new tokens) is longer, whether the prompt is longer than
    the window (3) or not (8); gemma: one layer slides, one does not; soft-capped scores and logits (Gemma 2's)
    over the cache too. In both cache layouts: CPU programs' (batch, key heads, slots, dim) and the one other
    backends keep, (batch, slots, key heads, dim)."""
    monkeypatch.setattr(decoder, "cache_heads_first", lambda: heads_first)
    generate._step.clear_cache()  # its programs are keyed by shapes, which the two layouts may share
    graphdef, params = _model(*preset.split(":"))
    prompts = [[3, 14, 15, 9, 2, 6], [5, 3], [8]]
    assert generate.generate(graphdef, params, prompts, 7) == _recompute_greedy(graphdef, params, prompts, 7)
    model = nnx.merge(graphdef, params)  # generate's cache for these 3 rows of 6 + 7 positions
    window = model.cfg.sliding_window
    slots = 2 if heads_first else 1  # the cache's axis of slots
    assert [k.shape[slots] for k, _ in model.init_cache(3, 13)] == [
        window if window and window < 13 and layer.attention.windowed else 13 for layer in model.layers]


def test_a_prompt_ends_at_the_stop_token_and_the_others_go_on():
    graphdef, params = _model("llama-tiny")
    prompts = [[3, 14, 15, 9, 2, 6], [5, 3], [8]]
    free = generate.generate(graphdef, params, prompts, 12)
    stop = free[0][3]
    got = generate.generate(graphdef, params, prompts, 12, stop_tokens=[stop])
    for row, tokens in zip(free, got):  # each cut after its first stop token (kept), else all 12
        assert tokens == (row[: row.index(stop) + 1] if stop in row else row)
    assert got[0] == free[0][: free[0].index(stop) + 1] and len(got[0]) <= 4
    first = free[0][0]  # every prompt ends at once: the prefill alone runs, no decode step
    with mock.patch.object(generate, "_step", wraps=generate._step) as step:
        assert generate.generate(graphdef, params, [prompts[0]] * 2, 12, stop_tokens=[first]) == [[first]] * 2
    assert step.call_count == 1
    short = ["model.max_position_embeddings=64"]  # learned positions end what a model can read; rotary ones do not
    with pytest.raises(ValueError, match="prompt \\+ new tokens = 69 exceeds the model.s 64 positions"):
        generate.generate(*_model("gpt-tiny", *short), [[1] * 9], 60)
    assert len(generate.generate(*_model("llama-tiny", *short), [[1] * 9], 60)[0]) == 60


def test_stop_tokens_are_the_tokenizers_eos_and_the_generation_configs(tmp_path):
    """HF's generate ends at generation_config.json's eos_token_id too: an id, or a list (chat checkpoints
    end a turn with a token of their own)."""
    tok = mock.Mock(eos_token_id=2)
    assert generate.stop_tokens(tok, read([tmp_path])) == [2]
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [7, 2, 9], "bos_token_id": 1}')
    assert generate.stop_tokens(tok, read([tmp_path, tmp_path / "missing"])) == [2, 7, 9]
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 5}')
    assert generate.stop_tokens(mock.Mock(spec=[]), read([tmp_path])) == [5]  # a character tokenizer has no EOS
    (tmp_path / "generation_config.json").write_text('[1]')
    with pytest.raises(generate.CheckpointError, match="generation_config.json: not a JSON object"):
        generate.stop_tokens(tok, read([tmp_path]))


def test_sampling_filters():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    draws = [int(generate.sample(logits, jax.random.key(i), 1.0, 2, 1.0)[0]) for i in range(200)]
    assert set(draws) == {0, 1}  # top-k 2
    draws = [int(generate.sample(logits, jax.random.key(i), 1.0, 0, 0.7)[0]) for i in range(200)]
    assert set(draws) == {0, 1}  # nucleus: 0.5 + 0.3 reaches 0.7
    assert int(generate.sample(logits, jax.random.key(0), 0.0, 0, 1.0)[0]) == 0
    draws = [int(generate.sample(logits, jax.random.key(i), 1.0, 0, 1.0)[0]) for i in range(400)]
    assert 0.4 < np.mean(np.asarray(draws) == 0) < 0.6


def _nucleus(logits: np.ndarray, top_k: int, top_p: float, min_p: float = 0.0) -> dict[int, float]:
    """HF's order, by a full sort: the top_k tokens, then the smallest most-likely set of them holding top_p of
    their renormalised mass, then those at least min_p times as likely as the first; {token: its probability
    within the set}."""
    order = np.argsort(-logits, kind="stable")[: top_k or None]
    probs = np.exp(logits[order] - logits[order].max())
    probs /= probs.sum()
    keep = (np.cumsum(probs) - probs < top_p) & (probs >= min_p * probs[0])
    return dict(zip(order[keep].tolist(), (probs[keep] / probs[keep].sum()).tolist()))


@pytest.mark.parametrize("spread,top_k,top_p,min_p", [
    (8.0, 0, 0.9, 0.0),   # peaked: the nucleus is among the NUCLEUS_CANDIDATES ranked first
    (0.1, 0, 0.9, 0.0),   # nearly flat: those candidates hold ~a quarter of the mass, so the whole vocabulary is ranked
    (0.1, 300, 0.5, 0.0),  # top-k first (more than the candidates), then top-p of what it left
    (8.0, 40, 1.0, 0.0),
    (2.0, 0, 1.0, 0.1),   # min_p alone, over the whole vocabulary
    (2.0, 0, 0.95, 0.05),  # top-p, then min_p
    (0.1, 0, 0.9, 0.99),  # the whole-vocabulary nucleus, then min_p
])
def test_sampling_draws_from_exactly_the_filtered_distribution(spread, top_k, top_p, min_p):
    vocab, draws = 1000, 4000
    logits = np.asarray(jax.random.normal(jax.random.key(7), (vocab,))) * spread
    want = _nucleus(logits, top_k, top_p, min_p)
    rows = jnp.tile(jnp.asarray(logits), (draws, 1))  # one independent draw per row
    tokens = np.asarray(generate.sample(rows, jax.random.key(3), 1.0, top_k, top_p, min_p))
    assert set(tokens.tolist()) <= set(want)  # nothing outside the filtered set, ever
    if len(want) < 50:  # frequencies of a set this small are measurable: within 5 standard errors
        for token, prob in want.items():
            assert abs(np.mean(tokens == token) - prob) < 5 * np.sqrt(prob * (1 - prob) / draws) + 1e-3, token
    else:
        assert len(set(tokens.tolist())) > 0.5 * min(len(want), draws)  # and the draws spread over it


@pytest.mark.parametrize("typical_p, epsilon, eta", [(0.5, 0, 0), (0.9, 3e-3, 0), (1.0, 0, 0.02), (0.3, 0, 3e-3)])
def test_typical_epsilon_and_eta_sampling_draw_from_hfs_warped_distribution(typical_p, epsilon, eta):
    """4000 draws of `sample` with typical_p, epsilon_cutoff or eta_cutoff fall in the set transformers' warpers
    keep, each token as often as its probability there within 5 standard errors."""
    torch = pytest.importorskip("torch")
    from transformers.generation import logits_process as lp

    vocab, draws = 200, 4000
    logits = np.asarray(jax.random.normal(jax.random.key(5), (vocab,))) * 3.0
    scores = torch.tensor(logits[None], dtype=torch.float32)
    for warper, used in ((lp.TypicalLogitsWarper, typical_p < 1), (lp.EpsilonLogitsWarper, epsilon > 0),
                         (lp.EtaLogitsWarper, eta > 0)):
        scores = warper({lp.TypicalLogitsWarper: typical_p, lp.EpsilonLogitsWarper: epsilon,
                         lp.EtaLogitsWarper: eta}[warper])(None, scores) if used else scores
    want = torch.softmax(scores, -1).numpy()[0]
    assert 1 < (want > 0).sum() < vocab  # a filter that really filters
    tokens = np.asarray(generate.sample(jnp.tile(jnp.asarray(logits), (draws, 1)), jax.random.key(3), 1.0, 0, 1.0,
                                        0.0, typical_p, epsilon, eta))
    assert set(tokens.tolist()) <= set(np.flatnonzero(want).tolist())
    for token in np.flatnonzero(want > 0.01):
        prob = want[token]
        assert abs(np.mean(tokens == token) - prob) < 5 * np.sqrt(prob * (1 - prob) / draws) + 1e-3, token


@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 1.0, 0.1), (0, 0.95, 0.05), (40, 0.9, 0.2)])
def test_the_reference_filter_is_hfs_warpers(top_k, top_p, min_p):
    """`_nucleus`, which the draws above are held to, keeps what transformers' TopK, TopP and MinP warpers keep."""
    torch = pytest.importorskip("torch")
    from transformers.generation import logits_process as lp

    logits = np.asarray(jax.random.normal(jax.random.key(7), (1000,))) * 2.0
    scores = torch.tensor(logits[None], dtype=torch.float32)
    warpers = [lp.TopKLogitsWarper(top_k)] if top_k else []
    for warper in warpers + [lp.TopPLogitsWarper(top_p), lp.MinPLogitsWarper(min_p)]:
        scores = warper(None, scores)
    assert set(np.flatnonzero(np.isfinite(scores.numpy()[0])).tolist()) == set(_nucleus(logits, top_k, top_p, min_p))


def test_sampling_settings_are_the_command_lines_then_the_generation_configs_as_hf_reads_it(tmp_path):
    """Without a generation_config.json: jaxbatch's own (temperature 0.8). With one: greedy unless do_sample;
    sampling fills what it leaves out with transformers' GenerationConfig defaults (top-k 50); its repetition
    penalty applies either way; a value given on the command line wins; a bad value names the file."""
    def settings(temperature, top_k, top_p, repetition_penalty=1.0, min_p=0.0, no_repeat_ngram_size=0,
                 min_new_tokens=0, min_length=0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0):
        return dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                    epsilon_cutoff=epsilon_cutoff, eta_cutoff=eta_cutoff, repetition_penalty=repetition_penalty,
                    no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens, min_length=min_length)

    missing = tmp_path / "missing"
    assert generate.sampling(read([missing])) == (settings(0.8, 0, 1.0),
                                                  "temperature, top_k, top_p from jaxbatch's defaults")
    path = tmp_path / "generation_config.json"
    path.write_text('{"do_sample": true, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [1, 2]}')
    assert generate.sampling(read([missing, tmp_path])) == (settings(0.6, 50, 0.9),
                                                            f"temperature, top_k, top_p from {path}")
    assert generate.sampling(read([tmp_path]), top_k=40) == (settings(0.6, 40, 0.9), f"temperature, top_p from {path}")
    assert generate.sampling(read([tmp_path]), temperature=0.0, top_k=None) == (
        settings(0.0, 50, 0.9), "the command line")  # greedy: nothing else matters
    assert generate.sampling(read([tmp_path]), temperature=1.0, top_k=0, top_p=1.0) == (settings(1.0, 0, 1.0),
                                                                                 "the command line")
    path.write_text('{"temperature": 0.6, "top_k": 20}')  # no do_sample: HF decodes greedily
    assert generate.sampling(read([tmp_path])) == (settings(0.0, 0, 1.0), f"temperature from {path}")
    path.write_text('{"temperature": 0.6, "repetition_penalty": 1.05}')  # a logits processor: greedy too
    assert generate.sampling(read([tmp_path])) == (settings(0.0, 0, 1.0, 1.05),
                                             f"temperature, repetition_penalty from {path}")
    assert generate.sampling(read([tmp_path]), repetition_penalty=1.0) == (settings(0.0, 0, 1.0),
                                                                           f"temperature from {path}")
    with pytest.raises(ValueError, match=r"--top-p must be in \(0, 1\], got 1.5"):
        generate.sampling(read([tmp_path]), top_p=1.5)
    with pytest.raises(ValueError, match=r"--repetition-penalty must be > 0 \(1 = none\), got 0"):
        generate.sampling(read([tmp_path]), repetition_penalty=0)
    path.write_text('{"do_sample": true, "top_k": null, "temperature": null, "repetition_penalty": null}')
    assert generate.sampling(read([tmp_path]))[0] == settings(1.0, 0, 1.0)
    path.write_text('{"no_repeat_ngram_size": 3, "min_new_tokens": 4.0, "min_length": null}')  # greedy too, as HF's
    assert generate.sampling(read([tmp_path])) == (settings(0.0, 0, 1.0, no_repeat_ngram_size=3, min_new_tokens=4),
                                                   f"temperature, no_repeat_ngram_size, min_new_tokens from {path}")
    path.write_text('{"min_length": 20}')
    assert generate.sampling(read([tmp_path])) == (settings(0.0, 0, 1.0, min_length=20),
                                                   f"temperature, min_length from {path}")
    assert generate.sampling(read([tmp_path]), no_repeat_ngram_size=0)[0]["no_repeat_ngram_size"] == 0
    with pytest.raises(ValueError, match=r"--no-repeat-ngram-size must be >= 0 \(0 = none\), got -1"):
        generate.sampling(read([tmp_path]), no_repeat_ngram_size=-1)
    path.write_text('{"do_sample": true, "min_p": 0.05}')
    assert generate.sampling(read([tmp_path])) == (settings(1.0, 50, 1.0, min_p=0.05),
                                             f"temperature, top_k, top_p, min_p from {path}")
    path.write_text('{"do_sample": true, "typical_p": 0.9, "epsilon_cutoff": 0.0, "eta_cutoff": 3e-4}')
    assert generate.sampling(read([tmp_path]), top_k=0) == (settings(1.0, 0, 1.0, typical_p=0.9, eta_cutoff=3e-4),
                                                            f"temperature, top_p, typical_p, eta_cutoff from {path}")
    path.write_text('{"typical_p": 0.9}')  # greedy: a sampling filter, not applied
    assert generate.sampling(read([tmp_path])) == (settings(0.0, 0, 1.0), f"temperature from {path}")
    with pytest.raises(ValueError, match=r"--epsilon-cutoff must be in \[0, 1\) \(0 = none\), got 1.0"):
        generate.sampling(read([tmp_path]), epsilon_cutoff=1.0)
    for bad in ('"top_p": 0', '"top_k": 2.5', '"temperature": "hot"', '"temperature": true',
                '"repetition_penalty": -1', '"min_p": 1.5', '"no_repeat_ngram_size": 2.5', '"min_new_tokens": -2',
                '"typical_p": 0', '"eta_cutoff": 1'):
        path.write_text(f'{{"do_sample": true, {bad}}}')
        with pytest.raises(generate.CheckpointError, match=r"generation_config.json: \w+ .* is not a valid"):
            generate.sampling(read([tmp_path]))


def test_max_new_tokens_is_the_command_lines_then_the_generation_configs(tmp_path):
    """HF's generate adds a generation_config.json's max_new_tokens when it is not given; else jaxbatch's own."""
    assert generate.max_new_tokens(read([tmp_path]), None, 200) == 200
    path = tmp_path / "generation_config.json"
    path.write_text('{"max_new_tokens": 7, "max_length": 4096}')
    assert generate.max_new_tokens(read([tmp_path]), None, 200) == 7
    assert generate.max_new_tokens(read([tmp_path]), 3, 200) == 3
    path.write_text('{"max_new_tokens": null}')
    assert generate.max_new_tokens(read([tmp_path]), None, 200) == 200
    for bad, shown in (("0", "0"), ("2.5", "2.5"), ("true", "True"), ('"10"', "'10'")):
        path.write_text(f'{{"max_new_tokens": {bad}}}')
        with pytest.raises(generate.CheckpointError, match=f"generation_config.json: max_new_tokens {shown} is not"):
            generate.max_new_tokens(read([tmp_path]), None, 200)


def test_generation_config_settings_it_does_not_apply_are_named(tmp_path):
    """Beam search, n-gram blocking and the like change HF's output; a file that sets them is named with
    them (the CLI prints one note line), where their no-op values and what it applies pass silently."""
    assert generate.unapplied(read([tmp_path])) == (None, [])
    path = tmp_path / "generation_config.json"
    path.write_text('{"do_sample": true, "top_k": 20, "repetition_penalty": 1.1, "num_beams": 1, "min_p": 0.0, '
                    '"suppress_tokens": [], "bos_token_id": 1, "max_length": 4096}')
    assert generate.unapplied(read([tmp_path])) == (path, [])
    path.write_text('{"num_beams": 4, "typical_p": 0.9, "min_p": 0.05, "sequence_bias": [[[7], 2.0]], '
                    '"suppress_tokens": [3], "num_beam_groups": 2, "guidance_scale": 1.5}')
    assert generate.unapplied(read([tmp_path]))[1] == ["num_beam_groups 2", "guidance_scale 1.5"]  # beams apply


@pytest.fixture(scope="module")
def random_gpt2(tmp_path_factory):
    """A random-init transformers GPT-2 with a 50-token vocabulary, and the same model read by jaxbatch."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxbatch import run as run_lib

    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=None, eos_token_id=None)).eval()
    folder = tmp_path_factory.mktemp("gpt2")
    theirs.save_pretrained(folder)
    return theirs, run_lib.restore(folder)


def test_repetition_penalty_gives_hfs_greedy_tokens(random_gpt2):
    """A random GPT-2 repeats itself, so the penalty changes its greedy continuation; ours equals transformers'
    generate(repetition_penalty=1.5) token for token (prompts of one length: HF counts a left pad among a row's
    tokens, which ours does not)."""
    import torch

    theirs, restored = random_gpt2
    prompts = np.random.default_rng(0).integers(0, 50, size=(3, 5))
    with torch.no_grad():
        want = theirs.generate(torch.tensor(prompts), attention_mask=torch.ones(3, 5, dtype=torch.long),
                               max_new_tokens=20, do_sample=False, repetition_penalty=1.5, pad_token_id=0)
    ours = generate.generate(restored.run.graphdef, restored.params, prompts.tolist(), 20, repetition_penalty=1.5)
    assert ours == want[:, 5:].tolist()
    plain = generate.generate(restored.run.graphdef, restored.params, prompts.tolist(), 20)
    assert plain != ours and max(map(len, map(set, plain))) < 20  # the plain continuations repeat tokens


def test_repeats_are_the_tokens_that_would_complete_an_ngram_held_already():
    tokens = np.asarray([5, 6, 7, 5, 6, 9, 5, 6])
    assert sorted(generate.repeats(tokens, 3).tolist()) == [7, 9]  # (5, 6) came before 7 and 9
    other = np.asarray([5, 6, 7, 5, 6, 9, 4, 6])
    assert generate.repeats(other, 3).tolist() == [] and generate.repeats(other, 2).tolist() == [7, 9]
    assert sorted(set(generate.repeats(tokens, 1).tolist())) == [5, 6, 7, 9]  # size 1: every token held
    assert generate.repeats(tokens, 9).tolist() == [] and generate.repeats(tokens[:2], 3).tolist() == []


@pytest.mark.parametrize("settings, eos", [
    (dict(no_repeat_ngram_size=2), 21), (dict(no_repeat_ngram_size=3, repetition_penalty=1.3), 21),
    (dict(no_repeat_ngram_size=1), 21), (dict(min_new_tokens=6, no_repeat_ngram_size=1), 21),
    (dict(no_repeat_ngram_size=1), 30), (dict(min_new_tokens=4, no_repeat_ngram_size=1), 30),
    (dict(min_length=9, no_repeat_ngram_size=1), 30)])  # prompt and new tokens: 4 new
@pytest.mark.parametrize("beams", [1, 3])
def test_ngram_blocking_and_min_new_tokens_give_hfs_tokens(random_gpt2, settings, eos, beams):
    """no_repeat_ngram_size and min_new_tokens as transformers' generate applies them, greedy and in beam search,
    token for token: a random GPT-2 repeats n-grams, and with no token repeated (size 1) it reaches EOS 21 in
    a few tokens (EOS 30 at once, greedy), which min_new_tokens puts off."""
    import torch

    theirs, restored = random_gpt2
    prompts = np.random.default_rng(0).integers(0, 50, size=(3, 5))
    with torch.no_grad():
        want = theirs.generate(torch.tensor(prompts), attention_mask=torch.ones(3, 5, dtype=torch.long),
                               max_new_tokens=20, do_sample=False, num_beams=beams, eos_token_id=eos, pad_token_id=1,
                               **settings)[:, 5:].tolist()
    if beams == 1:
        ours = generate.generate(restored.run.graphdef, restored.params, prompts.tolist(), 20, stop_tokens=[eos],
                                 **settings)
    else:
        ours = generate.beam_search(restored.run.graphdef, restored.params, prompts.tolist(), 20, num_beams=beams,
                                    stop_tokens=[eos], **settings)
    assert [row + [1] * (len(want[0]) - len(row)) for row in ours] == want
    lengths = [len(row) for row in ours]
    if settings == dict(no_repeat_ngram_size=1):
        assert min(lengths) < 6  # EOS early (min_new_tokens is the same with a bigger number)
    if "min_new_tokens" in settings or "min_length" in settings:
        assert min(lengths) > settings.get("min_new_tokens", settings.get("min_length", 0) - 5)
    if "no_repeat_ngram_size" in settings:
        size = settings["no_repeat_ngram_size"]
        for prompt, row in zip(prompts.tolist(), ours):
            grams = [tuple((prompt + row)[i:i + size]) for i in range(len(prompt + row) - size + 1)]
            assert len(grams) == len(set(grams))


def _pieces_tokenizer():
    """A tokenizer of the random GPT-2's 50 ids: characters and pieces of words, decoded by joining them."""
    import tokenizers
    import transformers

    pieces = list("abcdefghijklmnopqrstuvwxyz .,\n") + [
        "th", "he", "the", " the", "in", "er", "an", "st", "op", "sto", "pper", "las", "topper", "on", "at", "en", "nd",
        "ti", "es", "or"]
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token=None))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = tokenizers.decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, clean_up_tokenization_spaces=False)


def test_a_stop_string_ends_a_row_where_hfs_stop_string_criteria_ends_it():
    """After every token of 400 random rows (prompts among them), whether a stop string has just been completed or
    run past, as transformers' StopStringCriteria says: across tokens, inside one, overhanging either end, and not
    for one that ended before the last token."""
    import torch
    from transformers.generation.stopping_criteria import StopStringCriteria

    tok = _pieces_tokenizer()
    rng = np.random.default_rng(0)
    for strings in (["e"], ["stop"], ["th", "o"], [" the", "pp"], ["st\nn", "ti"], ["topper"]):
        theirs, ours = StopStringCriteria(tok, strings), generate.text_stops(tok, strings)
        checked = hits = 0
        for _ in range(400 // 6):
            row = rng.integers(0, 50, size=12).tolist()
            for n in range(3, 13):
                hit = bool(theirs(torch.tensor([row[:n]]), None)[0])
                assert ours(row[:n]) == hit, (strings, tok.convert_ids_to_tokens(row[:n]))
                checked, hits = checked + 1, hits + hit
        assert checked == 660 and 0 < hits < checked, (strings, hits)


@pytest.mark.parametrize("strings", [["e"], ["th", "o"], ["n"], ["pp"], ["zz"]])
@pytest.mark.parametrize("beams", [1, 3])
def test_stop_strings_end_continuations_as_hfs(random_gpt2, strings, beams):
    """HF's stop_strings, greedy and in beam search, token for token against transformers' generate(stop_strings=...,
    tokenizer=...) (with an EOS that never comes: without one HF keeps a stopped row going while others run)."""
    import torch

    theirs, restored = random_gpt2
    tok = _pieces_tokenizer()
    prompts = np.random.default_rng(1).integers(0, 50, size=(4, 5))
    with torch.no_grad():
        want = theirs.generate(torch.tensor(prompts), attention_mask=torch.ones(4, 5, dtype=torch.long),
                               max_new_tokens=20, do_sample=False, num_beams=beams, pad_token_id=1, eos_token_id=49,
                               stop_strings=strings, tokenizer=tok)[:, 5:].tolist()
    ends = generate.text_stops(tok, strings)
    if beams == 1:
        ours = generate.generate(restored.run.graphdef, restored.params, prompts.tolist(), 20, stop_text=ends,
                                 stop_tokens=[49])
    else:
        ours = generate.beam_search(restored.run.graphdef, restored.params, prompts.tolist(), 20, num_beams=beams,
                                    stop_text=ends, stop_tokens=[49])
    assert [row + [1] * (len(want[0]) - len(row)) for row in ours] == want
    assert all(49 not in row for row in ours)
    stopped = {("e", 3): 2, ("th", 3): 2, ("n", 1): 1, ("pp", 1): 1}.get((strings[0], beams), 0)
    assert sum(len(row) < 20 for row in ours) == stopped  # ("pp", 1): a "p" after the prompt's last "p"


def test_stop_strings_are_the_command_lines_then_the_generation_configs(tmp_path):
    config = tmp_path / "generation_config.json"
    config.write_text(json.dumps({"stop_strings": "\n\n"}))
    configs = generate.generation_configs([tmp_path])
    assert generate.stop_strings(configs, []) == ["\n\n"] and generate.stop_strings(configs, ["Q:"]) == ["Q:"]
    assert generate.stop_strings([], []) == []
    for bad in ([""], [3], {"a": 1}):
        config.write_text(json.dumps({"stop_strings": bad}))
        with pytest.raises(generate.CheckpointError, match="generation_config.json: stop_strings .* is not a string"):
            generate.stop_strings(generate.generation_configs([tmp_path]), [])
    with pytest.raises(ValueError, match="--stop must not be empty"):
        generate.stop_strings([], [""])
    assert generate.before_stop("a cat. Q: next", ["Q:", "."]) == "a cat" and generate.before_stop("ab", ["x"]) == "ab"


@pytest.mark.parametrize("settings", [
    dict(suppress_tokens=[15, 40]), dict(begin_suppress_tokens=[15, 40, 48]),
    dict(bad_words_ids=[[48], [15, 15], [27, 27, 27]]), dict(bad_words_ids=[[27, 27]], suppress_tokens=[8])])
@pytest.mark.parametrize("beams", [1, 3])
def test_suppressed_tokens_and_bad_words_give_hfs_tokens(random_gpt2, settings, beams):
    """A generation config's suppress_tokens (never), begin_suppress_tokens (not first) and bad_words_ids (not the
    token that would complete one, the prompt's tokens counted), greedy and in beam search, token for token as
    transformers' generate applies them; this model's plain continuations take those tokens."""
    import torch

    theirs, restored = random_gpt2
    prompts = np.random.default_rng(0).integers(0, 50, size=(3, 5))
    with torch.no_grad():
        want = theirs.generate(torch.tensor(prompts), attention_mask=torch.ones(3, 5, dtype=torch.long),
                               max_new_tokens=12, do_sample=False, num_beams=beams, eos_token_id=21, pad_token_id=1,
                               **settings)[:, 5:].tolist()
    run = generate.generate if beams == 1 else functools.partial(generate.beam_search, num_beams=beams)
    ours = run(restored.run.graphdef, restored.params, prompts.tolist(), 12, stop_tokens=[21], **settings)
    assert [row + [1] * (len(want[0]) - len(row)) for row in ours] == want
    assert ours != run(restored.run.graphdef, restored.params, prompts.tolist(), 12, stop_tokens=[21])
    for row, prompt in zip(ours, prompts.tolist()):
        assert not set(row) & set(settings.get("suppress_tokens", [])) | set(row[:1]) & set(
            settings.get("begin_suppress_tokens", []))
        whole = prompt + row
        for word in settings.get("bad_words_ids", []):
            assert not any(whole[i:i + len(word)] == word
                           for i in range(len(prompt) - len(word) + 1, len(whole) - len(word) + 1))


@pytest.mark.parametrize("beams, settings", [  # this model's logits differ by ~0.1
    (1, dict(sequence_bias=[([30], -0.1), ([27, 27], -0.15)])),
    (1, dict(sequence_bias=[([27], 0.05), ([15, 27], -0.2)])),
    (3, dict(sequence_bias=[([30, 30], -0.1), ([8, 8], -0.1)])),
    (3, dict(sequence_bias=[([8], -0.1), ([30, 30], -0.2)])),
    (1, dict(forced_eos_token_id=[7, 9])), (3, dict(forced_eos_token_id=[7, 9])),
    (1, dict(forced_eos_token_id=[3], sequence_bias=[([4], 0.06)])),
    (3, dict(forced_eos_token_id=[3], sequence_bias=[([4], 0.06)]))])
def test_sequence_bias_and_forced_tokens_give_hfs_tokens(random_gpt2, beams, settings):
    """A generation config's sequence_bias (added to a token's score, for a longer sequence where the row's tokens
    end with the rest of it) and forced_eos_token_id (the last new token), greedy and in beam search (where the
    bias is added to log-probabilities), token for token as transformers' generate applies them; each changes
    the continuations, a longer sequence's bias too."""
    import torch

    theirs, restored = random_gpt2
    prompts = np.random.default_rng(0).integers(0, 50, size=(3, 5))
    hf = {k: [[list(ids), bias] for ids, bias in v] if k == "sequence_bias" else v for k, v in settings.items()}
    with torch.no_grad():
        want = theirs.generate(torch.tensor(prompts), attention_mask=torch.ones(3, 5, dtype=torch.long),
                               max_new_tokens=12, do_sample=False, num_beams=beams, eos_token_id=21, pad_token_id=1,
                               **hf)[:, 5:].tolist()
    run = functools.partial(generate.generate if beams == 1 else functools.partial(generate.beam_search,
                                                                                   num_beams=beams),
                            restored.run.graphdef, restored.params, prompts.tolist(), 12, stop_tokens=[21])
    ours = run(**settings)
    assert [row + [1] * (len(want[0]) - len(row)) for row in ours] == want
    assert ours != run()
    longer = [(ids, bias) for ids, bias in settings.get("sequence_bias", []) if len(ids) > 1]
    if longer:
        singles = [(ids, bias) for ids, bias in settings["sequence_bias"] if len(ids) == 1]
        assert ours != run(**{**settings, "sequence_bias": singles})
    if "forced_eos_token_id" in settings:
        assert all(row[-1] in settings["forced_eos_token_id"] for row in ours if len(row) == 12)


def test_a_forced_first_token_follows_one_token_prompts_as_hfs():
    """forced_bos_token_id forces the token after a row's first (HF's ForcedBOSTokenLogitsProcessor reads the
    prompt as the row's start): after one-token prompts, greedy and sampled; after longer prompts, nothing."""
    graphdef, params = _model("gpt-tiny")
    prompts = [[3], [9]]
    for sampler in ({}, dict(temperature=1.0, seed=4)):
        forced = generate.generate(graphdef, params, prompts, 4, forced_bos_token_id=11, **sampler)
        assert [row[0] for row in forced] == [11, 11]
        assert 11 not in [row[0] for row in generate.generate(graphdef, params, prompts, 4, **sampler)]
        plain = generate.generate(graphdef, params, [[3, 5]], 4, **sampler)
        assert generate.generate(graphdef, params, [[3, 5]], 4, forced_bos_token_id=11, **sampler) == plain


def test_token_shaping_is_read_from_the_generation_config_and_checked(tmp_path):
    path = tmp_path / "generation_config.json"
    assert generate.token_shaping([], 50) == {}
    path.write_text('{"sequence_bias": [[[3], 1.5], [[4, 5], -2], [[3], 0.5]], "forced_bos_token_id": null, '
                    '"forced_eos_token_id": 2}')
    assert generate.token_shaping(read([tmp_path]), 50) == {  # the later [3]'s bias, as HF's dict of them
        "sequence_bias": [([3], 0.5), ([4, 5], -2.0)], "forced_eos_token_id": [2]}
    path.write_text('{"sequence_bias": [], "forced_bos_token_id": 7, "forced_eos_token_id": [2, 3]}')
    assert generate.token_shaping(read([tmp_path]), 50) == {"forced_bos_token_id": 7, "forced_eos_token_id": [2, 3]}
    for bad in ('{"sequence_bias": [[[50], 1.0]]}', '{"sequence_bias": [[3, 1.0]]}', '{"sequence_bias": [[[], 1.0]]}',
                '{"sequence_bias": [[[3], "up"]]}', '{"sequence_bias": {"3": 1.0}}', '{"forced_bos_token_id": [1, 2]}',
                '{"forced_eos_token_id": 50}', '{"forced_eos_token_id": true}'):
        path.write_text(bad)
        with pytest.raises(generate.CheckpointError, match="generation_config.json: .* is not .*below the vocabulary "
                                                           "size 50"):
            generate.token_shaping(read([tmp_path]), 50)


def test_token_bans_are_read_from_the_generation_config_and_checked(tmp_path):
    path = tmp_path / "generation_config.json"
    assert generate.token_bans([], 50, [0]) == {}
    path.write_text('{"suppress_tokens": [3, 4], "begin_suppress_tokens": null, "bad_words_ids": [[0], [5, 6]]}')
    assert generate.token_bans(read([tmp_path]), 50, [0]) == {"suppress_tokens": [3, 4],
                                                              "bad_words_ids": [[5, 6]]}  # a stop token: HF drops it
    for bad in ('{"suppress_tokens": [50]}', '{"bad_words_ids": [5]}', '{"bad_words_ids": [[]]}',
                '{"begin_suppress_tokens": "3"}', '{"suppress_tokens": [true]}'):
        path.write_text(bad)
        with pytest.raises(generate.CheckpointError, match="generation_config.json: .* is not a list of .*token ids "
                                                           "below the vocabulary size 50"):
            generate.token_bans(read([tmp_path]), 50, [0])


@pytest.mark.parametrize("eos, length_penalty, early_stopping, beams, penalty, n", [
    (None, 1.0, False, 4, 1.0, 1), (7, 1.0, False, 4, 1.3, 2), (7, 0.0, "never", 4, 1.0, 1),
    (21, 0.0, "never", 2, 1.3, 1), (21, 2.0, "never", 4, 1.0, 1), (21, -1.0, True, 4, 1.3, 3),
    (21, 1.0, True, 2, 1.3, 2), (33, 0.0, "never", 4, 1.3, 1)])
def test_beam_search_gives_hfs_beams(random_gpt2, eos, length_penalty, early_stopping, beams, penalty, n):
    """generate(num_beams=...) of transformers, token for token and in its order of the returned beams, with
    beams that end at an EOS (7, 21 and 33 end some of this model's beams early) or run to max_new_tokens, every
    early_stopping mode, length penalties that favour short, long or neither, and the repetition penalty."""
    import torch

    theirs, restored = random_gpt2
    prompts = np.random.default_rng(0).integers(0, 50, size=(3, 5))
    with torch.no_grad():
        want = theirs.generate(torch.tensor(prompts), attention_mask=torch.ones(3, 5, dtype=torch.long),
                               max_new_tokens=12, num_beams=beams, num_return_sequences=n, do_sample=False,
                               eos_token_id=eos, pad_token_id=1, length_penalty=length_penalty,
                               early_stopping=early_stopping, repetition_penalty=penalty)[:, 5:].tolist()
    ours = generate.beam_search(restored.run.graphdef, restored.params, prompts.tolist(), 12, num_beams=beams,
                                length_penalty=length_penalty, early_stopping=early_stopping,
                                repetition_penalty=penalty, stop_tokens=[] if eos is None else [eos],
                                num_return_sequences=n)
    assert len(ours) == 3 * n
    width = max(map(len, ours))  # HF pads the shorter ones with pad_token_id
    assert [row + [1] * (width - len(row)) for row in ours] == want
    assert all(row[-1] == eos for row in ours if len(row) < 12)
    if eos in (7, 21) and length_penalty < 2:
        assert any(len(row) < 12 for row in ours)  # the EOS path is taken (a penalty of 2 favours the long)


@pytest.mark.parametrize("temperature, top_k, top_p, min_p, keep, typical_p, epsilon, eta", [
    (0.7, 0, 1.0, 0.0, 2, 1.0, 0, 0), (1.0, 1, 1.0, 0.0, 2, 1.0, 0, 0), (0.5, 0, 0.05, 0.0, 3, 1.0, 0, 0),
    (1.0, 40, 0.9, 0.2, 2, 1.0, 0, 0), (2.0, 0, 1.0, 0.99, 3, 1.0, 0, 0), (1.0, 5, 0.3, 0.1, 4, 1.0, 0, 0),
    (1.0, 0, 1.0, 0.0, 1, 0.5, 0, 0), (0.7, 0, 1.0, 0.0, 3, 0.2, 0, 0), (1.0, 0, 1.0, 0.0, 1, 1.0, 3e-3, 0),
    (1.0, 0, 1.0, 0.0, 2, 1.0, 0, 3e-3), (2.0, 50, 0.9, 0.0, 3, 0.5, 3e-3, 3e-3), (1.0, 0, 1.0, 0.0, 2, 0.9, 0.05, 0)])
def test_beam_sampling_warps_log_probabilities_as_hfs_warpers(temperature, top_k, top_p, min_p, keep, typical_p,
                                                              epsilon, eta):
    """HF's beam sampling warps log-probabilities, not logits (the temperature divides them unnormalised), and
    each warper keeps at least one more token than there are stop tokens (`keep`): the likeliest left, but the
    most typical for typical_p (it may drop the likeliest, after which epsilon keeps the likeliest left). Sampling
    (keep 1) warps logits through the same filters."""
    torch = pytest.importorskip("torch")
    from transformers.generation import logits_process as lp

    logp = jax.nn.log_softmax(jax.random.normal(jax.random.key(7), (3, 1000)) * 2.0)
    scores = torch.tensor(np.asarray(logp))
    for warper, used in ((lambda: lp.TemperatureLogitsWarper(temperature), True),  # HF's order
                         (lambda: lp.TopKLogitsWarper(top_k, min_tokens_to_keep=keep), top_k > 0),
                         (lambda: lp.TopPLogitsWarper(top_p, min_tokens_to_keep=keep), top_p < 1),
                         (lambda: lp.MinPLogitsWarper(min_p, min_tokens_to_keep=keep), min_p > 0),
                         (lambda: lp.TypicalLogitsWarper(typical_p, min_tokens_to_keep=keep), typical_p < 1),
                         (lambda: lp.EpsilonLogitsWarper(epsilon, min_tokens_to_keep=keep), epsilon > 0),
                         (lambda: lp.EtaLogitsWarper(eta, min_tokens_to_keep=keep), eta > 0)):
        scores = warper()(None, scores) if used else scores
    ours = np.asarray(generate.warp(logp, temperature, top_k, top_p, min_p, keep, typical_p, epsilon, eta))
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(scores.numpy()))
    np.testing.assert_allclose(ours[np.isfinite(ours)], scores.numpy()[np.isfinite(ours)], rtol=1e-6)
    assert (np.isfinite(ours).sum(1) >= keep).all()


@pytest.mark.parametrize("temperature, top_k, top_p, min_p, beams, penalty", [
    (1.0, 5, 1.0, 0.0, 2, 1.0), (0.7, 0, 0.8, 0.05, 3, 1.3)])
def test_beam_sampling_draws_hfs_beams(random_gpt2, temperature, top_k, top_p, min_p, beams, penalty):
    """generate(do_sample=True, num_beams=...) of transformers, as a distribution: 4000 draws of the best beam of
    one prompt from each side; the counts of each continuation (3 tokens, those HF or we drew >= 10 times, the
    rest pooled) agree by a two-sample chi-square test within 5 standard deviations of its degrees of freedom."""
    import torch

    theirs, restored = random_gpt2
    draws, prompt = 4000, [3, 14, 15, 9, 2]
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=penalty)
    torch.manual_seed(0)
    with torch.no_grad():
        want = theirs.generate(torch.tensor([prompt] * draws), attention_mask=torch.ones(draws, 5, dtype=torch.long),
                               max_new_tokens=3, num_beams=beams, do_sample=True, eos_token_id=7, pad_token_id=1,
                               **settings)[:, 5:].tolist()
    ours = generate.beam_search(restored.run.graphdef, restored.params, [prompt] * draws, 3, num_beams=beams,
                                stop_tokens=[7], seed=0, **settings)
    theirs_n = Counter(tuple(row[:row.index(7) + 1] if 7 in row else row) for row in want)
    ours_n = Counter(map(tuple, ours))
    common = [k for k in theirs_n.keys() | ours_n.keys() if theirs_n[k] + ours_n[k] >= 10]
    pairs = [(theirs_n[k], ours_n[k]) for k in common]
    pairs.append((draws - sum(a for a, _ in pairs), draws - sum(b for _, b in pairs)))
    pairs = [(a, b) for a, b in pairs if a + b]
    statistic, df = sum((a - b) ** 2 / (a + b) for a, b in pairs), len(pairs) - 1
    assert df >= 5 and statistic < df + 5 * np.sqrt(2 * df), (statistic, df)  # a spread of continuations, alike
    greedy = generate.beam_search(restored.run.graphdef, restored.params, [prompt], 3, num_beams=beams,
                                  stop_tokens=[7], repetition_penalty=penalty)
    assert ours_n[tuple(greedy[0])] < 0.5 * draws  # drawn, not searched


@pytest.mark.parametrize("preset", ["llama-tiny", "gemma3-tiny:model.sliding_window=3:model.sliding_window_pattern=2"])
def test_beam_search_of_a_ragged_batch_is_each_prompts_own(preset):
    """Left padding and the cache's reordering between beams (grouped key heads, a windowed layer's ring): a
    prompt's beams are the same searched alone or beside longer and shorter prompts."""
    graphdef, params = _model(*preset.split(":"))
    prompts = [[3, 14, 15, 9, 2, 6], [5, 3], [8]]
    together = generate.beam_search(graphdef, params, prompts, 9, num_beams=3, num_return_sequences=2,
                                    stop_tokens=[4])
    alone = [row for p in prompts for row in generate.beam_search(graphdef, params, [p], 9, num_beams=3,
                                                                  num_return_sequences=2, stop_tokens=[4])]
    assert together == alone and len(set(map(tuple, together))) == 6
    with pytest.raises(ValueError, match=r"at most --num-beams \(3\) continuations of a prompt, not 4"):
        generate.beam_search(graphdef, params, prompts, 9, num_beams=3, num_return_sequences=4)


def test_beam_settings_are_the_command_lines_then_the_generation_configs(tmp_path):
    path = tmp_path / "generation_config.json"
    assert generate.beam_settings(read([tmp_path])) == {"num_beams": 1, "length_penalty": 1.0, "early_stopping": False}
    path.write_text('{"num_beams": 4, "length_penalty": 0.6, "early_stopping": "never", "do_sample": false}')
    assert generate.beam_settings(read([tmp_path])) == {"num_beams": 4, "length_penalty": 0.6,
                                                        "early_stopping": "never"}
    assert generate.beam_settings(read([tmp_path]), num_beams=2, early_stopping=True) == {
        "num_beams": 2, "length_penalty": 0.6, "early_stopping": True}
    path.write_text('{"num_beams": null, "length_penalty": null, "early_stopping": null}')  # transformers 5's unset
    assert generate.beam_settings(read([tmp_path])) == generate.BEAMS
    for bad, message in (('"num_beams": 0', "num_beams .--num-beams. must be a whole number >= 1, got 0"),
                         ('"num_beams": 2.5', ".*got 2.5"),
                         ('"early_stopping": "soon"', "early_stopping .* got 'soon'"),
                         ('"early_stopping": 1', "early_stopping .* got 1"),
                         ('"length_penalty": "long"', "length_penalty .* must be a finite number")):
        path.write_text(f"{{{bad}}}")
        with pytest.raises(generate.CheckpointError, match=f"generation_config.json: {message}"):
            generate.beam_settings(read([tmp_path]))
    with pytest.raises(ValueError, match="got -1"):
        generate.beam_settings(read([tmp_path / "missing"]), num_beams=-1)


def test_nucleus_keeps_what_a_stable_sort_keeps_ties_included():
    """`nucleus` finds top-p's set without sorting; against a stable descending sort's `cumsum - p < top_p`, on
    rows whose probabilities are multiples of 1/256 (exact in float32, so sums never round, and no top_p below is
    one; many ties, some at the boundary, where the earlier tokens in index order are the ones kept)."""
    assert np.asarray(generate.nucleus(jnp.asarray([[0.2, 0.3, 0.2, 0.2, 0.1]]), 0.6)).tolist() == [
        [True, True, True, False, False]]  # 0.3, then the first two of the three 0.2s
    rng = np.random.default_rng(0)
    probs = np.stack([rng.multinomial(256, rng.dirichlet(np.full(97, 0.5))) for _ in range(40)]) / 256
    for top_p in (0.05, 0.3, 0.55, 0.9, 0.999):
        order = np.argsort(-probs, axis=1, kind="stable")
        ranked = np.take_along_axis(probs, order, 1)
        want = np.zeros_like(probs, bool)
        np.put_along_axis(want, order, np.cumsum(ranked, 1) - ranked < top_p, 1)
        np.testing.assert_array_equal(np.asarray(generate.nucleus(jnp.asarray(probs, jnp.float32), top_p)), want)


def test_train_a_char_lm_then_generate_and_evaluate(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n\n".join("the cat sat on the mat. the dog sat on the log." for _ in range(60)))
    run = tmp_path / "run"
    args = ["train", "model.preset=gpt-tiny", "model.num_layers=2", "data.name=text", f"data.data_dir={corpus}",
            f"data.cache_dir={tmp_path / 'cache'}", "data.seq_len=32", "train.batch_size=16", "train.steps=60",
            "train.eval_every=60", "train.progress=false", "optim.learning_rate=3e-3", "mesh.data=2", "mesh.fsdp=2",
            "mesh.model=2", f"train.run_dir={run}"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "bits/byte" in out
    final = json.loads((run / "summary.json").read_text())["final_eval"]
    assert final["loss"] < 1.0 and final["perplexity"] == pytest.approx(np.exp(final["loss"]), rel=1e-6)
    assert final["bits_per_byte"] == pytest.approx(final["loss"] / np.log(2), rel=1e-6)  # one byte per char
    from jaxbatch import evaluate

    assert set(evaluate.metric_names("lm")) <= set(final)  # what checkpoint.best_metric may name is reported
    assert cli.main(["generate", str(run), "--prompt", "the cat", "--prompt", "the", "--max-new-tokens", "12",
                     "--temperature", "0", "mesh.model=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("the cat") and len(lines[0]) == len("the cat") + 12 and " sat on" in lines[0]
    assert cli.main(["generate", str(run), "--prompt", "the cat", "--prompt", "the", "--max-new-tokens", "12",
                     "--temperature", "0", "--output-format", "json"]) == 0  # one record a line
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0] == {"prompt": "the cat", "completion": lines[0][len("the cat"):], "new_tokens": 12,
                          "finish_reason": "length"} and records[1]["prompt"] == "the" and len(records) == 2
    assert cli.main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "12", "--temperature", "0",
                     "--no-repeat-ngram-size", "2", "--min-length", "9"]) == 0  # HF's n-gram blocking: no pair twice
    captured = capsys.readouterr()
    assert captured.err == "sampling: greedy, no_repeat_ngram_size 2, min_length 9 (the command line)\n", captured.err
    text = captured.out.splitlines()[0]
    assert len(text) == len("the cat") + 12 and len({text[i:i + 2] for i in range(len(text) - 1)}) == len(text) - 1
    assert cli.main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "12", "--temperature", "0",
                     "--stop", " on", "--stop", "zz", "--output-format", "json"]) == 0  # HF's stop_strings
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"prompt": "the cat", "completion": " sat", "new_tokens": 7,
                                        "finish_reason": "stop"}  # its tokens HF's: the stop string's kept
    assert "stop strings: ' on', 'zz'\n" in captured.err
    (run / "generation_config.json").write_text('{"stop_strings": "the"}')  # the prompt's "the" ends nothing
    assert cli.main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "the cat sat on "
    (run / "generation_config.json").write_text('{"suppress_tokens": [1]}')  # the characters' " " (sorted)
    assert cli.main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "12"]) == 0
    captured = capsys.readouterr()
    assert " " not in captured.out.splitlines()[0][len("the cat"):] and "banned: suppress_tokens [1] (" in captured.err
    (run / "generation_config.json").write_text('{"forced_eos_token_id": 1, "do_sample": true, "typical_p": 0.5}')
    assert cli.main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "5", "--eta-cutoff", "0.01"]) == 0
    captured = capsys.readouterr()  # the last new token forced to " ", typical and eta sampling
    assert captured.out.splitlines()[0].endswith(" ") and len(captured.out.splitlines()[0]) == len("the cat") + 5
    assert "also: forced_eos_token_id [1] (" in captured.err and ", typical_p 0.5, eta_cutoff 0.01 (" in captured.err
    (run / "generation_config.json").write_text('{"stop_strings": [""]}')
    assert cli.main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "12"]) == 2
    err = capsys.readouterr().err
    assert "generation_config.json: stop_strings [''] is not a string or a list" in err and err.count("\n") == 1
    (run / "generation_config.json").unlink()
    if Path("/dev/full").exists():  # a full disk under `> file` mid-output: one line naming standard output
        with open("/dev/full", "w", buffering=1) as full, mock.patch("sys.stdout", full):
            assert cli.main(["generate", str(run), "--prompt", "the", "--max-new-tokens", "2"]) == 2
        err = capsys.readouterr().err
        assert err == ("sampling: temperature 0.8, top_k 0, top_p 1.0 (temperature, top_k, top_p from jaxbatch's "
                       "defaults)\njaxbatch: WriteError: standard output: cannot write (No space left on device)\n"
                       ), err
    (tmp_path / "prompts.txt").write_text("the\n\nthe dog\nthe cat\n")  # a file of prompts, in batches of 2
    assert cli.main(["generate", str(run), "--prompt", "the cat", "--prompts", str(tmp_path / "prompts.txt"),
                     "--max-new-tokens", "12", "--temperature", "0", "--batch-size", "2"]) == 0
    outs = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("---")]
    assert len(outs) == 4 and outs[1].startswith("the") and outs[2].startswith("the dog")
    assert outs[0] == outs[3] == lines[0]  # greedy: the same continuation whatever the batch and its padding
    assert cli.main(["generate", str(run), "--prompt", "the", "--prompt", "a", "--num-return-sequences", "3",
                     "--max-new-tokens", "12", "--temperature", "1.0"]) == 0  # HF's num_return_sequences
    outs = capsys.readouterr().out.split("-" * 40 + "\n")[:-1]  # a sampled continuation may hold new lines
    assert len(outs) == 6 and all(o.startswith("the") for o in outs[:3]) and all(o.startswith("a") for o in outs[3:])
    assert len(set(outs[:3])) > 1  # three draws, not one
    assert cli.main(["generate", str(run), "--prompt", "the", "--num-return-sequences", "2", "--temperature", "0"]) == 2
    assert "--num-return-sequences needs sampling" in capsys.readouterr().err
    assert cli.main(["generate", str(run), "--prompt", "the cat", "--prompt", "the", "--num-beams", "3",
                     "--num-return-sequences", "2", "--max-new-tokens", "12"]) == 0  # jaxbatch's sampling gives way
    captured = capsys.readouterr()
    outs = [line for line in captured.out.splitlines() if not line.startswith("---")]
    assert captured.err.startswith("beam search: num_beams 3, length_penalty 1.0, early_stopping False\n")
    assert len(outs) == 4 and outs[0] != outs[1] and all(o.startswith("the cat") for o in outs[:2])
    assert " sat on" in outs[0] and outs[2].startswith("the") and outs[2] != outs[3]
    assert cli.main(["generate", str(run), "--prompt", "the", "--num-beams", "3", "--temperature", "1",
                     "--num-return-sequences", "2", "--max-new-tokens", "12"]) == 0  # HF's beam sampling
    captured = capsys.readouterr()
    assert captured.err.startswith("beam sampling: num_beams 3, length_penalty 1.0, early_stopping False, temperature "
                                   "1.0, top_k 0, top_p 1.0 (top_k, top_p from jaxbatch's defaults)\n"), captured.err
    outs = [line for line in captured.out.split("-" * 40 + "\n")[:-1]]
    assert len(outs) == 2 and outs[0] != outs[1] and all(o.startswith("the") for o in outs)
    assert cli.main(["generate", str(run), "--prompt", "the", "--num-beams", "2", "--num-return-sequences", "3"]) == 2
    err = capsys.readouterr().err
    assert "at most --num-beams (2) continuations of a prompt, not 3" in err and err.count("\n") == 1, err
    assert cli.main(["generate", str(run), "--max-new-tokens", "3"]) == 2
    assert "give a --prompt or a --prompts file" in capsys.readouterr().err
    assert cli.main(["generate", str(run), "--prompt", "€", "--max-new-tokens", "3"]) == 2
    assert "not in the character vocabulary" in capsys.readouterr().err
    for flag, value, message in (("--temperature", "-1", "--temperature must be >= 0"),
                                 ("--top-k", "-3", "--top-k must be >= 0"), ("--top-p", "2", "--top-p must be in"),
                                 ("--length-penalty", "nan", "--length-penalty) must be a finite number")):
        assert cli.main(["generate", str(run), "--prompt", "the", flag, value]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    (tmp_path / "lines.txt").write_text("the cat\n")
    assert cli.main(["predict", str(run), "--input", str(tmp_path / "lines.txt")]) == 2
    err = capsys.readouterr().err
    assert "is a causal language model" in err and err.count("\n") == 1, err
    # the same run scored again from the CLI (the text corpus goes through the LM path, with bits per byte)
    assert cli.main(["evaluate", str(run), "--data-dir", str(corpus)]) == 0  # no test file: validation, named
    out = capsys.readouterr().out
    assert out.startswith(f"validation (") and f"loss {final['loss']:.4f}" in out, out
    assert cli.main(["evaluate", str(run), "--data-dir", str(corpus), "--split", "test"]) == 2  # asked for: refused
    err = capsys.readouterr().err
    assert err.startswith("jaxbatch: DataError: data.name=text has no test split in") and err.count("\n") == 1, err
    # compressed to int8 (tables and kernels, dynamic activations): generate and evaluate take the folder as is
    assert cli.main(["compress", str(run), str(tmp_path / "int8"), "--quant", "int8", "--act", "dynamic"]) == 0
    assert cli.main(["generate", str(tmp_path / "int8"), "--prompt", "the cat", "--max-new-tokens", "12",
                     "--temperature", "0"]) == 0
    assert " sat on" in capsys.readouterr().out.splitlines()[-2]
    assert cli.main(["evaluate", str(tmp_path / "int8"), "--data-dir", str(corpus), "--split", "validation"]) == 0
    loss = float(capsys.readouterr().out.split("loss ")[1].split()[0])
    assert loss != final["loss"] and abs(loss - final["loss"]) < 0.05


def test_a_continuation_is_decoded_in_the_context_of_its_prompt():
    """Decoded alone, a continuation loses the space before its first word in a sentencepiece (Metaspace)
    tokenizer, as Llama 2's and Mistral's, and in WordPiece; decoded after its prompt it keeps it, and a
    WordPiece '##' piece still joins the prompt's last word."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")

    words = ["<unk>", "\u2581The", "\u2581capital", "\u2581is", "\u2581Paris"]
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer, core.decoder = tokenizers.pre_tokenizers.Metaspace(), tokenizers.decoders.Metaspace()
    spm = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    assert spm.encode("The capital is") == [1, 2, 3] and spm.decode([4]) == "Paris"  # alone: glued to "is"
    assert generate.continuation(spm, [1, 2, 3], [4]) == " Paris"
    vocab = ["[UNK]", "hello", "world", "light", "##s"]
    core = tokenizers.Tokenizer(tokenizers.models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    core.pre_tokenizer, core.decoder = tokenizers.pre_tokenizers.Whitespace(), tokenizers.decoders.WordPiece()
    wordpiece = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    assert generate.continuation(wordpiece, [1, 2], [3, 4]) == " lights"
    assert generate.continuation(wordpiece, [1, 2], [4, 3]) == "s light"


def test_chat_prompts_are_rendered_by_the_tokenizers_template(tmp_path):
    """generate --chat: each prompt is a user's message, rendered up to the assistant's turn by the chat
    template the model was fine-tuned with; a tokenizer without one is refused in one line."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from jaxbatch import generate as generate_lib
    from jaxbatch.errors import ConfigError

    words = ["<unk>", "<|user|>", "<|assistant|>", "<|end|>", "hi", "there"]
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|end|>",
                                               additional_special_tokens=["<|user|>", "<|assistant|>"])
    assert generate_lib.encode_prompts(tok, ["hi there"]) == [[4, 5]]
    with pytest.raises(ConfigError, match="--chat renders prompts with the tokenizer's chat template"):
        generate_lib.encode_prompts(tok, ["hi"], chat=True)
    tok.chat_template = ("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    assert generate_lib.encode_prompts(tok, ["hi there", "hi"], chat=True) == [[1, 4, 5, 3, 2], [1, 4, 3, 2]]
