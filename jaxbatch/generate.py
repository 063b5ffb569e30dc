"""Text generation from a trained decoder with a KV cache: greedy, temperature, top-k, top-p, min-p, typical,
epsilon and eta sampling, a repetition penalty, n-gram blocking, a minimum length, banned and biased token
sequences and forced first and last tokens, beam search as transformers' generate(num_beams=...)
runs it (its beams, token for token; beam sampling too), batched prompts of different lengths (left-padded;
padding keys are masked), on whatever mesh the params live on. One compiled prefill over the prompts, then one
compiled single-token step reused for every new token; equal token for token to recomputing the whole sequence
each step (tests/test_generate.py)."""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbatch.errors import CheckpointError, ConfigError


NUCLEUS_CANDIDATES = 256  # top-p alone looks among this many most likely tokens first (`sample`)


@functools.partial(jax.jit, static_argnames=("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff",
                                             "eta_cutoff"))
def sample(logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float, min_p: float = 0.0,
           typical_p: float = 1.0, epsilon_cutoff: float = 0.0, eta_cutoff: float = 0.0) -> jax.Array:
    """Next token ids from (batch, vocab) logits: argmax at temperature 0, else a draw from the
    temperature-scaled distribution restricted to the top_k tokens, then to the top_p probability mass of
    what is left, then to the tokens at least min_p times as likely as the most likely one (HF's order); with
    typical_p, epsilon_cutoff or eta_cutoff, through `warp`'s filters in HF's order (typical sampling sorts). Nothing
    sorts the vocabulary, which took XLA:CPU ~40 ms for 4 x 50257 logits, near a 124M-parameter decoder's ~50 ms
    token step: top-k ranks its k with `lax.top_k` (0.5 ms); top-p alone ranks NUCLEUS_CANDIDATES tokens (1 ms),
    and where some row's hold less than top_p (a flat distribution) it finds the threshold over the whole
    vocabulary instead (`nucleus`, 8 ms)."""
    if temperature <= 0:
        return jnp.argmax(logits, -1).astype(jnp.int32)
    if typical_p < 1.0 or epsilon_cutoff > 0 or eta_cutoff > 0:
        kept = warp(logits, temperature, top_k, top_p, min_p, 1, typical_p, epsilon_cutoff, eta_cutoff)
        return jax.random.categorical(key, kept).astype(jnp.int32)
    logits = logits / temperature

    def likely(values):  # min_p: a ratio of probabilities is a difference of logits, whatever the normalisation
        if min_p <= 0:
            return values
        return jnp.where(values >= jnp.max(values, -1, keepdims=True) + math.log(min_p), values, -jnp.inf)

    if top_k <= 0 and top_p >= 1.0:
        return jax.random.categorical(key, likely(logits)).astype(jnp.int32)

    def draw(values, ids, total):  # values: candidates' logits, most likely first; total: logsumexp of the pool
        if top_p < 1.0:
            probs = jnp.exp(values - total)
            values = jnp.where(jnp.cumsum(probs, -1) - probs < top_p, values, -jnp.inf)  # keeps the most likely
        choice = jax.random.categorical(key, likely(values))
        return jnp.take_along_axis(ids, choice[:, None], -1)[:, 0].astype(jnp.int32)

    vocab = logits.shape[-1]
    if top_k > 0:
        values, ids = jax.lax.top_k(logits, min(top_k, vocab))
        return draw(values, ids, jax.nn.logsumexp(values, -1, keepdims=True))
    total = jax.nn.logsumexp(logits, -1, keepdims=True)
    values, ids = jax.lax.top_k(logits, min(NUCLEUS_CANDIDATES, vocab))

    def whole_vocabulary():
        kept = jnp.where(nucleus(jnp.exp(logits - total), top_p), logits, -jnp.inf)
        return jax.random.categorical(key, likely(kept)).astype(jnp.int32)

    enough = jnp.all(jnp.sum(jnp.exp(values - total), -1) >= top_p)
    return jax.lax.cond(enough, lambda: draw(values, ids, total), whole_vocabulary)


def nucleus(probs: jax.Array, top_p: float) -> jax.Array:
    """Which tokens top-p keeps of (batch, vocab) probabilities: those whose more likely tokens (equal ones in
    index order, as a stable sort puts them) hold less than top_p. Without a sort: a token is kept when the mass
    strictly above its probability is below top_p, a test that only gets easier as the probability grows, so
    the smallest kept probability is found by halving the range of float32 bit patterns (positive floats order
    as their bits do) 31 times, each a masked sum; then, among tokens of exactly that probability, the first
    ones in index order that still fit."""
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)

    def above(b):  # per row, the mass of the tokens strictly more likely than bit pattern b
        return jnp.sum(jnp.where(bits > b[:, None], probs, 0.0), -1)

    def halve(_, bounds):  # the smallest pattern whose mass above is below top_p lies in [lo, hi]
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        fits = above(mid) < top_p
        return jnp.where(fits, lo, mid + 1), jnp.where(fits, mid, hi)

    rows = probs.shape[0]
    lowest, _ = jax.lax.fori_loop(0, 31, halve, (jnp.zeros(rows, jnp.int32), jnp.max(bits, -1)))
    kept = jnp.min(jnp.where(bits >= lowest[:, None], bits, jnp.iinfo(jnp.int32).max), -1)  # a real probability
    tied = bits == kept[:, None]
    earlier = jnp.cumsum(tied, -1) - tied  # equal tokens before each one, in index order
    fits = above(kept)[:, None] + earlier * jax.lax.bitcast_convert_type(kept, jnp.float32)[:, None] < top_p
    return (bits > kept[:, None]) | (tied & fits)


@jax.jit
def penalize(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """HF's repetition penalty (Keskar et al. 2019): the logit of every token already in the row (prompt or
    continuation) divided by `penalty` where positive, multiplied where negative."""
    return jnp.where(seen, jnp.where(logits > 0, logits / penalty, logits * penalty), logits)


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))  # the cache updated in place
def _step(graphdef, params, ids, positions, key_valid, cache, index):
    model = nnx.merge(graphdef, params)
    logits, cache = model.decode_step(ids, positions, key_valid, cache, index)
    return logits[:, -1], cache


def _prefill(graphdef, params, prompts: list[list[int]], max_new_tokens: int):
    """The cache after the prompts (left-padded to the longest, padding never attended to): (last logits,
    cache, which key slots are real, each row's next position, the padded prompt length)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    model = nnx.merge(graphdef, params)
    batch, longest = len(prompts), max(len(p) for p in prompts)
    total = longest + max_new_tokens
    if model.position_limit is not None and total > model.position_limit:
        raise ValueError(f"prompt + new tokens = {total} exceeds the model's {model.position_limit} positions")
    pad = np.asarray([longest - len(p) for p in prompts])
    ids = np.zeros((batch, longest), np.int32)
    for i, p in enumerate(prompts):
        ids[i, pad[i]:] = p
    key_valid = jnp.asarray(np.arange(total)[None, :] >= pad[:, None])
    positions = np.maximum(np.arange(longest)[None, :] - pad[:, None], 0).astype(np.int32)
    logits, cache = _step(graphdef, params, jnp.asarray(ids), jnp.asarray(positions), key_valid,
                          model.init_cache(batch, total), jnp.asarray(0, jnp.int32))
    return logits, cache, key_valid, jnp.asarray(positions[:, -1] + 1), longest


def _seen(prompts: list[list[int]], vocab: int) -> jax.Array:
    """(rows, vocab): which tokens each prompt holds, for the repetition penalty."""
    seen = np.zeros((len(prompts), vocab), bool)
    for row, p in enumerate(prompts):
        seen[row, p] = True
    return jnp.asarray(seen)


def repeats(tokens: np.ndarray, n: int) -> np.ndarray:
    """The tokens that would complete an n-gram `tokens` holds already (HF's no_repeat_ngram_size): those after
    each earlier occurrence of its last n - 1 tokens."""
    if len(tokens) < n:
        return tokens[:0]
    grams = np.lib.stride_tricks.sliding_window_view(tokens, n)
    return grams[(grams[:, :-1] == tokens[len(tokens) - n + 1:]).all(1), -1]


def _bans(histories, rows: int, vocab: int, new: int, no_repeat_ngram_size: int, min_new_tokens: int,
          stop_tokens: Sequence[int], suppress_tokens: Sequence[int] = (), begin_suppress_tokens: Sequence[int] = (),
          bad_words_ids: Sequence[Sequence[int]] = ()) -> jax.Array | None:
    """(rows, vocab) ((vocab,) when no ban depends on a row): what each row may not take next, or None where
    nothing is banned: the tokens that would repeat an n-gram of the row (prompt and continuation, `histories()`,
    read only when a ban depends on them: it brings every token taken so far to the host), the stop tokens while
    fewer than `min_new_tokens` are `new`, `suppress_tokens` always and `begin_suppress_tokens` first, and the last
    token of each of `bad_words_ids` that the row's tokens would complete (HF's NoRepeatNGram, MinNewTokensLength,
    SuppressTokens, SuppressTokensAtBegin and NoBadWords processors; its MinLength one is min_new_tokens of its
    length less the padded prompt's)."""
    early = new < min_new_tokens and len(stop_tokens) > 0
    always = [*suppress_tokens, *(begin_suppress_tokens if new == 0 else ()), *(stop_tokens if early else ()),
              *(w[0] for w in bad_words_ids if len(w) == 1)]
    longer = [list(w) for w in bad_words_ids if len(w) > 1]
    if not (no_repeat_ngram_size or always or longer):
        return None
    ban = np.zeros(vocab, bool)
    ban[always] = True
    if no_repeat_ngram_size or longer:
        ban = np.tile(ban, (rows, 1))
        for row, tokens in enumerate(histories()):
            tokens = np.asarray(tokens)
            if no_repeat_ngram_size:
                ban[row, repeats(tokens, no_repeat_ngram_size)] = True
            ban[row, [w[-1] for w in longer if _completes(tokens, w)]] = True
    return jnp.asarray(ban)


def _completes(tokens, sequence: list[int]) -> bool:
    """Whether a row's `tokens` end with all of `sequence` but its last token: taking that one completes it (HF's
    NoBadWords and SequenceBias processors)."""
    return len(sequence) - 1 <= len(tokens) and list(tokens[len(tokens) + 1 - len(sequence):]) == sequence[:-1]


StopText = Callable[[list[int]], bool]  # whether a row's tokens (prompt, then new ones) end at a stop string


def text_stops(tokenizer, strings: Sequence[str]) -> StopText | None:
    """HF's StopStringCriteria: a row stops at the token that completes one of `strings` in its text (its prompt's
    too), holds one, or runs past its end (["st", "opera"] stops at "stop"); a string the last token does not reach
    ended nothing now. Each check decodes the row's last tokens (the longest string's length many times over), not
    the whole row."""
    if not strings:
        return None
    window = 4 * max(map(len, strings)) + 8

    def ends(tokens: list[int]) -> bool:
        tail = list(tokens[-window:])
        now, before = tokenizer.decode(tail), tokenizer.decode(tail[:-1])
        kept = len(os.path.commonprefix([now, before]))  # what the last token left as it was
        return any(now.find(s, max(0, kept - len(s) + 1)) >= 0 for s in strings)

    return ends


def before_stop(text: str, strings: Sequence[str]) -> str:
    """A continuation's text up to its first stop string, which is left out (as OpenAI's API and
    lm-evaluation-harness's `until` cut it; the tokens are HF's, which keep it)."""
    cuts = [at for at in (text.find(s) for s in strings) if at >= 0]
    return text[:min(cuts)] if cuts else text


def _banned(logits, ban):
    return logits if ban is None else jnp.where(ban, -jnp.inf, logits)


def _bias(histories, rows: int, vocab: int, sequence_bias: Sequence[tuple[Sequence[int], float]]) -> jax.Array | None:
    """(rows, vocab) to add to the scores ((vocab,) when every row's is the same), or None: HF's
    SequenceBiasLogitsProcessor. A one-token sequence's bias always; a longer one's on its last token where the
    row's tokens (`histories()`, read only for those) end with the rest of it."""
    if not sequence_bias:
        return None
    out = np.zeros(vocab, np.float32)
    for ids, bias in sequence_bias:
        if len(ids) == 1:
            out[ids[0]] = bias
    longer = [(list(ids), bias) for ids, bias in sequence_bias if len(ids) > 1]
    if longer:
        out = np.tile(out, (rows, 1))
        for row, tokens in enumerate(histories()):
            for ids, bias in longer:
                if _completes(tokens, ids):
                    out[row, ids[-1]] += bias
    return jnp.asarray(out)


def _biased(scores, bias):
    return scores if bias is None else scores + bias


def _forced(new: int, longest: int, max_new_tokens: int, vocab: int, forced_bos_token_id: int | None,
            forced_eos_token_id: Sequence[int]) -> jax.Array | None:
    """(vocab,): the only tokens the `new`th may be, or None: HF's ForcedEOSTokenLogitsProcessor (an end of
    sequence as the last new token) over its ForcedBOSTokenLogitsProcessor (`forced_bos_token_id` as the first
    token of a row, so only after one-token prompts: a decoder's rows start with the prompt). A forced token wins
    over the bans (HF would suppress it after forcing it, leaving none)."""
    ids = list(forced_eos_token_id) if forced_eos_token_id and new == max_new_tokens - 1 else (
        [forced_bos_token_id] if forced_bos_token_id is not None and longest + new == 1 else [])
    if not ids:
        return None
    return jnp.asarray(np.isin(np.arange(vocab), ids))


def _only(scores, forced):
    return scores if forced is None else jnp.broadcast_to(jnp.where(forced, 0.0, -jnp.inf), scores.shape).astype(
        scores.dtype)


def generate(graphdef, params, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, typical_p: float = 1.0,
             epsilon_cutoff: float = 0.0, eta_cutoff: float = 0.0, repetition_penalty: float = 1.0,
             no_repeat_ngram_size: int = 0, min_new_tokens: int = 0, min_length: int = 0, seed: int = 0,
             stop_tokens: Sequence[int] = (), stop_text: StopText | None = None, sequence_bias: Sequence = (),
             forced_bos_token_id: int | None = None, forced_eos_token_id: Sequence[int] = (),
             **banned: Sequence) -> list[list[int]]:
    """The new token ids for each prompt (a list of token ids, at least one). A prompt's continuation ends at
    the first of `stop_tokens` (end-of-sequence ids; kept as its last token, as HF's generate does) or at the
    token that ends a stop string (`stop_text`, from `text_stops`), and the loop ends once every prompt has ended.
    `sequence_bias` (`_bias`), `repetition_penalty` (`penalize`), the bans (`_bans`) and the forced tokens
    (`_forced`) come in that order before the sampling filters, as HF's logits processors come before its warpers;
    a prompt's left padding is not among its tokens. `banned`: `_bans`' suppress_tokens, begin_suppress_tokens,
    bad_words_ids."""
    filters = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                   epsilon_cutoff=epsilon_cutoff, eta_cutoff=eta_cutoff)
    check_sampling(**filters, repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                   min_new_tokens=min_new_tokens, min_length=min_length)
    logits, cache, key_valid, next_pos, longest = _prefill(graphdef, params, prompts, max_new_tokens)
    batch = len(prompts)
    key = jax.random.key(seed)
    taken, ended, end = [[] for _ in prompts], np.zeros(batch, bool), np.full(batch, max_new_tokens - 1)
    seen = _seen(prompts, logits.shape[-1]) if repetition_penalty != 1.0 else None

    def so_far():  # each row's tokens: its prompt, then what it took (kept on the host, a step's tokens at a time)
        return [p + t for p, t in zip(prompts, taken)]

    vocab = logits.shape[-1]
    for i in range(max_new_tokens):
        logits = _biased(logits, _bias(so_far, batch, vocab, sequence_bias))
        if seen is not None:
            logits = penalize(logits, seen, repetition_penalty)
        logits = _banned(logits, _bans(so_far, batch, vocab, i, no_repeat_ngram_size,
                                       max(min_new_tokens, min_length - longest), stop_tokens, **banned))
        logits = _only(logits, _forced(i, longest, max_new_tokens, vocab, forced_bos_token_id, forced_eos_token_id))
        token = sample(logits, jax.random.fold_in(key, i), **filters)
        if seen is not None:
            seen = seen.at[jnp.arange(batch), token].set(True)
        now = np.asarray(token)
        for row, t in zip(taken, now.tolist()):
            row.append(t)
        stops = np.isin(now, stop_tokens) if stop_tokens else np.zeros(batch, bool)
        if stop_text is not None:
            stops |= [not done and stop_text(row) for done, row in zip(ended, so_far())]
        end[stops & ~ended] = i
        ended |= stops
        if i == max_new_tokens - 1 or ended.all():
            break
        logits, cache = _step(graphdef, params, token[:, None], next_pos[:, None], key_valid, cache,
                              jnp.asarray(longest + i, jnp.int32))
        next_pos = next_pos + 1
    return [row[: stop + 1] for row, stop in zip(taken, end)]


def warp(logp: jax.Array, temperature: float, top_k: int, top_p: float, min_p: float, min_keep: int,
         typical_p: float = 1.0, epsilon_cutoff: float = 0.0, eta_cutoff: float = 0.0) -> jax.Array:
    """(rows, vocab) log-probabilities (or logits) as HF's sampling warpers leave them: divided by the temperature,
    then -inf outside the top_k, the top_p mass, min_p of the likeliest, the typical_p mass of the tokens whose
    surprise is nearest the entropy (`typical`), those at least epsilon_cutoff likely, and those at least eta likely
    (eta: min(eta_cutoff, sqrt(eta_cutoff) * exp(-entropy)); Hewitt et al. 2022), each filter keeping at least
    `min_keep` tokens (HF's min_tokens_to_keep: one more than the stop tokens in beam methods, else 1): the
    likeliest, the most typical for typical_p."""
    x = logp / temperature

    def at_least(keep):  # a filter's kept tokens, and always the `min_keep` likeliest of those left so far
        return jnp.where(keep | (x >= jax.lax.top_k(x, min_keep)[0][:, -1:]), x, -jnp.inf)

    if top_k > 0:
        x = at_least(x >= jax.lax.top_k(x, min(max(top_k, min_keep), x.shape[-1]))[0][:, -1:])
    if top_p < 1.0:
        x = at_least(nucleus(jax.nn.softmax(x, -1), top_p))
    if min_p > 0:
        x = at_least(x >= jnp.max(x, -1, keepdims=True) + math.log(min_p))
    if typical_p < 1.0:
        x = jnp.where(typical(x, typical_p, min_keep), x, -jnp.inf)
    if epsilon_cutoff > 0:
        x = at_least(jax.nn.softmax(x, -1) >= epsilon_cutoff)
    if eta_cutoff > 0:
        _, p, entropy = _entropy(x)
        x = at_least(p >= jnp.minimum(eta_cutoff, jnp.sqrt(eta_cutoff) * jnp.exp(-entropy)))
    return x


def typical(x: jax.Array, mass: float, min_keep: int = 1) -> jax.Array:
    """Which tokens HF's TypicalLogitsWarper keeps of (rows, vocab) logits (Meister et al. 2022): ranked by how far
    their surprise -log p is from the entropy, the fewest that hold `mass` (the first whose running sum reaches it
    included), at least `min_keep`, and any tied with the last one kept. A full sort of the vocabulary."""
    logp, p, entropy = _entropy(x)
    shifted = jnp.abs(-logp - entropy)
    order = jnp.argsort(shifted, -1, stable=True)
    ranked = jnp.take_along_axis(shifted, order, -1)
    last = jnp.minimum(jnp.sum(jnp.cumsum(jnp.take_along_axis(p, order, -1), -1) < mass, -1), x.shape[-1] - 1)
    keep = (ranked <= jnp.take_along_axis(ranked, last[:, None], -1)) | (jnp.arange(x.shape[-1]) < min_keep)
    return jnp.zeros_like(keep).at[jnp.arange(x.shape[0])[:, None], order].set(keep)


def _entropy(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log-probabilities, probabilities, each row's entropy in nats) of (rows, vocab) logits, -inf ones included
    (they add none)."""
    logp = jax.nn.log_softmax(x, -1)
    p = jnp.exp(logp)
    return logp, p, -jnp.sum(jnp.where(p > 0, p * logp, 0.0), -1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("beams", "keep", "temperature", "top_k", "top_p", "min_p", "typical_p",
                                             "epsilon_cutoff", "eta_cutoff"))
def _candidates(logits, scores, seen, penalty, ban, key, beams: int, keep: int, temperature: float = 0.0,
                top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, typical_p: float = 1.0,
                epsilon_cutoff: float = 0.0, eta_cutoff: float = 0.0, bias=None, forced=None):
    """Each prompt's `keep` continuations over all its beams: (scores, beam * vocab + token), best first. A
    beam's score is the sum of its tokens' log-probabilities, the bias, penalty, bans and forced tokens applied to
    them (HF's order).
    The best `keep` at temperature 0; else, as HF's beam sampling, the log-probabilities warped (`warp`) and `keep`
    drawn without replacement in proportion to exp(score) (the Gumbel top-k trick: torch.multinomial's
    distribution)."""
    logp = _biased(jax.nn.log_softmax(logits.astype(jnp.float32), -1), bias)
    if seen is not None:
        logp = penalize(logp, seen, penalty)
    logp = _only(_banned(logp, ban), forced)
    if temperature > 0:
        logp = warp(logp, temperature, top_k, top_p, min_p, keep // beams, typical_p, epsilon_cutoff, eta_cutoff)
    vocab = logp.shape[-1]
    total = (logp.reshape(-1, beams, vocab) + scores[:, :, None]).reshape(-1, beams * vocab)
    if temperature <= 0:
        return jax.lax.top_k(total, keep)
    _, index = jax.lax.top_k(total + jax.random.gumbel(key, total.shape), keep)
    drawn = jnp.take_along_axis(total, index, -1)
    order = jnp.argsort(-drawn, -1, stable=True)
    return jnp.take_along_axis(drawn, order, -1), jnp.take_along_axis(index, order, -1)


@functools.partial(jax.jit, donate_argnames=("cache",))
def _reorder(cache, rows):
    """The cache's rows (every array is batch-first) taken in the order of the beams that go on."""
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), cache)


NEVER = -1.0e9  # HF's score for what may not be chosen


def beam_search(graphdef, params, prompts: list[list[int]], max_new_tokens: int, *, num_beams: int,
                length_penalty: float = 1.0, early_stopping: bool | str = False, repetition_penalty: float = 1.0,
                no_repeat_ngram_size: int = 0, min_new_tokens: int = 0, min_length: int = 0,
                stop_tokens: Sequence[int] = (), num_return_sequences: int = 1, temperature: float = 0.0,
                top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, typical_p: float = 1.0,
                epsilon_cutoff: float = 0.0, eta_cutoff: float = 0.0, seed: int = 0,
                stop_text: StopText | None = None, sequence_bias: Sequence = (), forced_bos_token_id: int | None = None,
                forced_eos_token_id: Sequence[int] = (), **banned: Sequence) -> list[list[int]]:
    """The best of `num_beams` beams for each prompt, as transformers' generate(num_beams=...) chooses it: each
    step keeps the prompt's best max(2, 1 + len(stop_tokens)) x num_beams continuations; those among the first
    num_beams that end (a stop token, or max_new_tokens) join the finished hypotheses, scored sum of
    log-probabilities / generated length ** length_penalty, the num_beams best kept; the best of the rest go on.
    A prompt stops taking hypotheses once none of its running beams could beat its worst finished one
    (`early_stopping`: False, HF's heuristic at the current length; "never": at the longest length when
    length_penalty > 0; True: as soon as num_beams have finished), and the loop ends when no prompt takes any.
    Returns each prompt's `num_return_sequences` best finished hypotheses, prompt by prompt (HF's order).
    `temperature` > 0 is HF's beam sampling (do_sample with num_beams): the continuations are drawn (`_candidates`)
    from the warped log-probabilities, which are then the beams' scores. A stop string (`stop_text`) ends a
    hypothesis as a stop token does (HF's stopping criteria, applied to every continuation kept)."""
    check_beams(num_beams, early_stopping, num_return_sequences)
    filters = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                   epsilon_cutoff=epsilon_cutoff, eta_cutoff=eta_cutoff)
    check_sampling(**filters, repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                   min_new_tokens=min_new_tokens, min_length=min_length)
    sampler = filters if temperature > 0 else {}
    key = jax.random.key(seed)
    batch, beams = len(prompts), num_beams
    each_beam = [p for p in prompts for _ in range(beams)]  # row b * beams + k: prompt b's beam k
    logits, cache, key_valid, next_pos, longest = _prefill(graphdef, params, each_beam, max_new_tokens)
    seen = _seen(each_beam, logits.shape[-1]) if repetition_penalty != 1.0 else None
    keep = max(2, 1 + len(stop_tokens)) * beams
    first = np.arange(keep) < beams  # only these may finish: the rest are spares to go on with
    rows, never = np.arange(batch)[:, None], np.float32(NEVER)
    running = np.zeros((batch, beams, max_new_tokens), np.int64)
    scores = np.where(np.arange(beams) == 0, 0, never).astype(np.float32)[None].repeat(batch, 0)
    finished = np.zeros((batch, beams, max_new_tokens), np.int64)
    lengths = np.zeros((batch, beams), np.int64)
    final = np.full((batch, beams), never, np.float32)
    done = np.zeros((batch, beams), bool)
    open_ = np.ones(batch, bool)  # HF's is_early_stop_heuristic_unsatisfied
    for i in range(max_new_tokens):
        vocab = logits.shape[-1]

        def histories():  # each beam's tokens: its prompt, then what it took
            return [p + running[r // beams, r % beams, :i].tolist() for r, p in enumerate(each_beam)]

        ban = _bans(histories, len(each_beam), vocab, i, no_repeat_ngram_size,
                    max(min_new_tokens, min_length - longest), stop_tokens, **banned)
        shaped = dict(bias=_bias(histories, len(each_beam), vocab, sequence_bias),
                      forced=_forced(i, longest, max_new_tokens, vocab, forced_bos_token_id, forced_eos_token_id))
        top, index = (np.asarray(x) for x in _candidates(logits, jnp.asarray(scores), seen, repetition_penalty, ban,
                                                           jax.random.fold_in(key, i), beams, keep, **sampler,
                                                           **shaped))
        parent, token = index // logits.shape[-1], index % logits.shape[-1]
        candidates = running[rows, parent]
        candidates[:, :, i] = token
        ends = np.isin(token, stop_tokens) | (i == max_new_tokens - 1)
        if stop_text is not None:
            ends |= np.asarray([[stop_text(prompts[b] + candidates[b, j, :i + 1].tolist()) for j in range(keep)]
                                for b in range(batch)], bool)
        going = top + ends.astype(np.float32) * never
        order = np.argsort(-going, axis=1, kind="stable")[:, :beams]
        running, scores, parent = candidates[rows, order], going[rows, order], parent[rows, order]
        new = top / np.float32((i + 1) ** length_penalty)
        new += ((done.all(1, keepdims=True) & (early_stopping is True)) | ~open_[:, None]).astype(np.float32) * never
        new += (~(ends & first)).astype(np.float32) * never
        pool = np.concatenate([final, new], 1)
        best = np.argsort(-pool, axis=1, kind="stable")[:, :beams]
        finished = np.concatenate([finished, candidates], 1)[rows, best]
        lengths = np.concatenate([lengths, np.full(token.shape, i + 1)], 1)[rows, best]
        done = np.concatenate([done, ends & first], 1)[rows, best]
        final = pool[rows, best]
        reach = max_new_tokens if early_stopping == "never" and length_penalty > 0 else i + 1
        worst = np.where(done, final.min(1, keepdims=True), never)
        open_ &= (scores[:, :1] / np.float32(reach ** length_penalty) > worst).any(1)
        if not open_.any() or (done.all() and early_stopping is True) or ends.all():
            break
        flat = (rows * beams + parent).reshape(-1)
        cache = _reorder(cache, jnp.asarray(flat, jnp.int32))
        tokens = jnp.asarray(running[:, :, i].reshape(-1), jnp.int32)
        if seen is not None:
            seen = seen[flat].at[jnp.arange(batch * beams), tokens].set(True)
        logits, cache = _step(graphdef, params, tokens[:, None], next_pos[:, None], key_valid, cache,
                              jnp.asarray(longest + i, jnp.int32))
        next_pos = next_pos + 1
    return [finished[b, k, :lengths[b, k]].tolist() for b in range(batch) for k in range(num_return_sequences)]


def check_beams(num_beams: int, early_stopping, num_return_sequences: int = 1) -> None:
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams (--num-beams) must be a whole number >= 1, got {num_beams!r}")
    if not isinstance(early_stopping, (bool, str)) or early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping (--early-stopping) must be true, false or \"never\" (HF's), "
                         f"got {early_stopping!r}")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"beam search returns at most --num-beams ({num_beams}) continuations of a prompt, "
                         f"not {num_return_sequences}")


SAMPLING_RANGES = {  # setting -> (whether a value is in its range, the range in words)
    "temperature": (lambda v: v >= 0, ">= 0 (0 = greedy)"),
    "top_k": (lambda v: v >= 0 and v == int(v), ">= 0 (0 = every token)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "min_p": (lambda v: 0 <= v <= 1, "in [0, 1] (0 = none)"),
    "repetition_penalty": (lambda v: v > 0, "> 0 (1 = none)"),
    "no_repeat_ngram_size": (lambda v: v >= 0 and v == int(v), ">= 0 (0 = none)"),
    "min_new_tokens": (lambda v: v >= 0 and v == int(v), ">= 0"),
    "min_length": (lambda v: v >= 0 and v == int(v), ">= 0 (prompt and new tokens)"),
    "typical_p": (lambda v: 0 < v <= 1, "in (0, 1] (1 = none)"),
    "epsilon_cutoff": (lambda v: 0 <= v < 1, "in [0, 1) (0 = none)"),
    "eta_cutoff": (lambda v: 0 <= v < 1, "in [0, 1) (0 = none)"),
}


def check_sampling(**settings) -> None:
    """Each of `settings` (SAMPLING_RANGES' keys) in its range, else a ValueError naming its flag."""
    for key, value in settings.items():
        in_range, words = SAMPLING_RANGES[key]
        if not in_range(value):
            raise ValueError(f"--{key.replace('_', '-')} must be {words}, got {value}")


def continuation(tokenizer, prompt: list[int], new: list[int]) -> str:
    """The text `new` tokens add to `prompt`: the whole decoded less the prompt decoded. Decoded alone, a
    continuation can lose the space before its first word (sentencepiece's Metaspace decoder strips it at the
    start of a text; WordPiece starts a text without one), gluing it to the prompt's last word."""
    whole, head = tokenizer.decode(list(prompt) + list(new)), tokenizer.decode(list(prompt))
    return whole[len(head):] if whole.startswith(head) else tokenizer.decode(list(new))


def encode_prompts(tokenizer, texts: Sequence[str], chat: bool = False) -> list[list[int]]:
    """Token ids of each prompt; with `chat`, each is a user's message rendered by the tokenizer's chat
    template up to the assistant's turn (as the model was fine-tuned on chats), special tokens included."""
    if not chat:
        return [list(tokenizer.encode(t)) for t in texts]
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("--chat renders prompts with the tokenizer's chat template, and this model's tokenizer has none")
    return [list(tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                                add_generation_prompt=True), add_special_tokens=False))
            for t in texts]


Configs = list[tuple[Path, dict]]  # (path, object) of generation_config.json files, first found first


def generation_configs(folders: Sequence[str | Path]) -> Configs:
    """(path, object) of each generation_config.json in `folders` (a Hugging Face folder, or the one a run was
    trained from), in their order: read once, then passed to what reads settings from them."""
    found = []
    for folder in folders:
        path = Path(folder) / "generation_config.json"
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{path}: not a JSON object ({e})") from e
            if not isinstance(config, dict):
                raise CheckpointError(f"{path}: not a JSON object (a {type(config).__name__})")
            found.append((path, config))
    return found


def stop_tokens(tokenizer, configs: Configs) -> list[int]:
    """The ids that end a continuation: the tokenizer's end of sequence, and the `eos_token_id` (one id or a
    list) of each generation config, as HF's generate reads it: chat checkpoints end a turn with a token of
    their own."""
    ids = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else []
    for _, config in configs:
        eos = config.get("eos_token_id")
        ids += [eos] if isinstance(eos, int) else [i for i in eos or () if isinstance(i, int)]
    return sorted(set(ids))


PROCESSORS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0, "min_length": 0}  # all modes
OFF = {"top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
       **PROCESSORS}  # the settings' values that change nothing
OWN_SAMPLING = {"temperature": 0.8, "top_k": 0, **OFF}  # without a generation_config.json
HF_SAMPLING = {"temperature": 1.0, "top_k": 50, **OFF}  # transformers' GenerationConfig defaults
GREEDY = {"temperature": 0.0, "top_k": 0, **OFF}
SAMPLERS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff",
            "eta_cutoff")  # what greedy decoding ignores (PROCESSORS it does not)


def applied(chosen: dict) -> list[str]:
    """The settings of `chosen` that shape the output: the temperature alone when it is 0 (greedy), else top_k
    and top_p too, and the other SAMPLERS when they filter; each of PROCESSORS that is on."""
    keys = ["temperature"] if chosen["temperature"] <= 0 else [
        k for k in SAMPLERS if k in ("temperature", "top_k", "top_p") or chosen[k] != OFF[k]]
    return keys + [k for k in PROCESSORS if chosen[k] != OFF[k]]


UNAPPLIED = {  # generation_config.json settings HF's generate applies and this one does not, with their no-op values
    "num_beam_groups": (None, 1), "diversity_penalty": (None, 0), "penalty_alpha": (None, 0),
    "top_h": (None, 0), "encoder_repetition_penalty": (None, 1),
    "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1), "dola_layers": (None,),
    "watermarking_config": (None,),
}


def max_new_tokens(configs: Configs, given: int | None, default: int) -> int:
    """How many tokens to add at most: `given`, else the first generation config's max_new_tokens (HF's
    generate reads it; a bad value is an error naming the file), else `default`."""
    if given is not None or not configs or configs[0][1].get("max_new_tokens") is None:
        return default if given is None else given
    path, value = configs[0][0], configs[0][1]["max_new_tokens"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{path}: max_new_tokens {value!r} is not a valid max_new_tokens: a whole number >= 1")
    return value


def stop_strings(configs: Configs, given: Sequence[str]) -> list[str]:
    """The strings that end a continuation: `given` (the command line's --stop), else the first generation
    config's `stop_strings` (one string or a list, as HF's GenerationConfig takes them)."""
    if given:
        if not all(given):
            raise ValueError("--stop must not be empty")
        return list(given)
    if not configs or configs[0][1].get("stop_strings") is None:
        return []
    path, value = configs[0][0], configs[0][1]["stop_strings"]
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CheckpointError(f"{path}: stop_strings {configs[0][1]['stop_strings']!r} is not a string or a list of "
                              f"non-empty strings")
    return value


BANS = ("suppress_tokens", "begin_suppress_tokens", "bad_words_ids")  # token lists a generation config may set


def token_bans(configs: Configs, vocab: int, stop_tokens: Sequence[int]) -> dict[str, list]:
    """The first generation config's BANS that ban something, each checked (ids of this vocabulary): what `_bans`
    takes. A one-token bad word that is a stop token bans nothing (HF's NoBadWords drops it)."""
    if not configs:
        return {}
    path, config = configs[0]
    out = {}
    for key in BANS:
        value = config.get(key)
        nested = key == "bad_words_ids"
        lists = value if nested else [value]
        ok = isinstance(value, list) and all(
            isinstance(ids, list) and (ids or not nested) and all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids) for ids in lists)
        if value is not None and not ok:
            what = "a list of lists of token ids" if nested else "a list of token ids"
            raise CheckpointError(f"{path}: {key} {value!r} is not {what} below the vocabulary size {vocab}")
        if nested and value:
            value = [ids for ids in value if not (len(ids) == 1 and ids[0] in stop_tokens)]
        if value:
            out[key] = value
    return out


def token_shaping(configs: Configs, vocab: int) -> dict:
    """The first generation config's sequence_bias ([token ids, bias] pairs; a later pair for the same ids replaces
    an earlier one, as HF's dict of them does), forced_bos_token_id (an id) and forced_eos_token_id (an id or a
    list), each checked (ids of this vocabulary, finite biases): what `generate` and `beam_search` take."""
    if not configs:
        return {}
    path, config = configs[0]

    def ids(value, most=None):
        return isinstance(value, list) and 0 < len(value) <= (most or len(value)) and all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in value)

    out, pairs = {}, config.get("sequence_bias")
    if pairs:
        if not (isinstance(pairs, list) and all(
                isinstance(pair, list) and len(pair) == 2 and ids(pair[0]) and isinstance(pair[1], (int, float))
                and not isinstance(pair[1], bool) and math.isfinite(pair[1]) for pair in pairs)):
            raise CheckpointError(f"{path}: sequence_bias {pairs!r} is not a list of [token ids below the vocabulary "
                                  f"size {vocab}, bias] pairs")
        out["sequence_bias"] = [(list(k), float(v)) for k, v in {tuple(i): b for i, b in pairs}.items()]
    for key in ("forced_bos_token_id", "forced_eos_token_id"):
        value = config.get(key)
        if value is None:
            continue
        value = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not ids(value, most=1 if key == "forced_bos_token_id" else None):
            raise CheckpointError(f"{path}: {key} {config[key]!r} is not a token id below the vocabulary size {vocab}"
                                  + " (or a list of them)" * (key == "forced_eos_token_id"))
        out[key] = value[0] if key == "forced_bos_token_id" else value
    return out


def unapplied(configs: Configs) -> tuple[Path | None, list[str]]:
    """The first generation config's path and the settings in it that HF's generate would apply and this one
    does not (group beams, sequence biases, forced tokens, ...), as 'key value'."""
    if not configs:
        return None, []
    path, config = configs[0]
    return path, [f"{k} {config[k]!r}" for k, neutral in UNAPPLIED.items() if k in config and config[k] not in neutral]


def sampling(configs: Configs, **given) -> tuple[dict, str]:
    """({temperature, top_k, top_p, min_p, *PROCESSORS}, where those that matter came from (`applied`): each one
    `given` (not None) as it is; the rest from the first generation config (`configs`), as HF's generate reads it
    (greedy unless `do_sample`; when sampling, GenerationConfig's defaults for what the file leaves out:
    temperature 1, top-k 50, top-p 1; a null top_k is none; its PROCESSORS either way), else jaxbatch's
    own (temperature 0.8, every token, no processor). A given value out of range is a ValueError."""
    base, source = dict(OWN_SAMPLING), "jaxbatch's defaults"
    if configs:
        path, config = configs[0]
        base, source = dict(HF_SAMPLING if config.get("do_sample") else GREEDY), str(path)
        for key in (SAMPLERS if config.get("do_sample") else ()) + tuple(PROCESSORS):
            value = config.get(key, base[key])
            if value is None:  # transformers 5 writes unset settings as null: a null top_k is none, the rest default
                value = 0 if key == "top_k" else base[key]
            in_range, words = SAMPLING_RANGES[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not in_range(value):
                whole = ("whole ", ", or null") if isinstance(base[key], int) else ("", "")
                raise CheckpointError(f"{path}: {key} {value!r} is not a valid {key}: a {whole[0]}number {words}"
                                      f"{whole[1]}")
            base[key] = type(base[key])(value)
    chosen = {k: given[k] if given.get(k) is not None else v for k, v in base.items()}
    check_sampling(**chosen)  # the file's values are valid: what is not came from the command line
    unset = [k for k in applied(chosen) if given.get(k) is None]
    return chosen, f"{', '.join(unset)} from {source}" if unset else "the command line"


BEAMS = {"num_beams": 1, "length_penalty": 1.0, "early_stopping": False}  # transformers' GenerationConfig defaults


def beam_settings(configs: Configs, **given) -> dict:
    """{num_beams, length_penalty, early_stopping}: each one `given` (not None) as it is, else the first
    generation config's (null is the default, as transformers 5 writes unset settings), else transformers'
    defaults (1 beam: no beam search). A value out of range is a ValueError (given) or a CheckpointError naming
    the file."""
    chosen = dict(BEAMS)
    if configs:
        path, config = configs[0]
        for key, default in BEAMS.items():
            value = config.get(key)
            chosen[key] = default if value is None else value
        try:
            check_beams(chosen["num_beams"], chosen["early_stopping"])
            _check_length_penalty(chosen["length_penalty"])
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from e
    chosen.update({k: v for k, v in given.items() if v is not None})
    check_beams(chosen["num_beams"], chosen["early_stopping"])
    _check_length_penalty(chosen["length_penalty"])
    return chosen


def _check_length_penalty(penalty) -> None:
    """A finite number: the finished beams are ranked by score / length ** length_penalty."""
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not math.isfinite(penalty):
        raise ValueError(f"length_penalty (--length-penalty) must be a finite number, got {penalty!r}")
