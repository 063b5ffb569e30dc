"""The decoder family: causal language models, GPT-2 and LLaMA-style from one block with options.

`arch=gpt2`: learned positions, LayerNorm, tanh-GELU MLP, biases, tied embeddings (HF `GPT2LMHeadModel`).
`arch=llama`: rotary positions (HF's rotate-half), RMSNorm, SwiGLU MLP, no biases, grouped-query attention,
untied head (HF `LlamaForCausalLM`); with `attention_bias` (qkv: Qwen2), a `sliding_window` (Mistral) and
`qk_norm` (Qwen3) it reads and writes those checkpoints too; `activation` swaps the MLP's nonlinearity.
`arch=gemma`: llama's block with RMSNorms that scale by 1 + weight, a second norm after attention and after
the MLP, a GELU-gated MLP, embeddings times sqrt(hidden_size), a sliding window on all layers but every
`sliding_window_pattern`th, and tanh soft-capped attention scores and logits (HF `Gemma2ForCausalLM`); with
normalised queries and keys and the windowed layers rotating by their own base it is Gemma 3's text model
(HF `Gemma3ForCausalLM`); with `block_norms=pre` (no norms after attention and the MLP, no window) Gemma 1's
(HF `GemmaForCausalLM`).
With `task=sequence` the LM head gives way to a `score` layer over the last real token of each row (HF's
`*ForSequenceClassification`: a text classifier or regressor); with `task=token`, to dropout and a `score`
layer with a bias at every position (HF's `*ForTokenClassification`: a tagger, each token seeing only those
before it); with `task=qa`, to a `score` layer of a start and an end logit per position without dropout (HF's
`*ForQuestionAnswering`, `qa_outputs`).
Attention goes through `layers.attend` (cuDNN's fused kernel on NVIDIA GPUs). Batches are *packed*: several documents per row, `segment_ids` (0 = padding) keep them from
attending to each other and `positions` restart at each document. Generation uses a KV cache
(`decode_step`; a windowed layer's is a ring of the window's slots), equal token for token to recomputing
the whole sequence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxbatch import losses, models
from jaxbatch.errors import CheckpointError, ConfigError
from jaxbatch.mesh import constrain
from jaxbatch.models.layers import (ACTIVATIONS, HEADS, REMAT, Dense, Dropout, Embed, LayerNorm, RMSNorm, attend,
                                    cache_heads_first, run_layers)

_GPT2 = dict(arch="gpt2", layer_norm_eps=1e-5, tie_embeddings=True, num_kv_heads=0, hidden_dropout=0.0)
_LLAMA = dict(arch="llama", layer_norm_eps=1e-6, tie_embeddings=False, hidden_dropout=0.0, rope_theta=10000.0)
_GEMMA3 = dict(_LLAMA, arch="gemma", tie_embeddings=True, qk_norm=True, rope_theta=1e6, rope_local_theta=1e4,
               sliding_window_pattern=6, query_scale=256.0, num_kv_heads=1, head_dim=256, max_position_embeddings=32768,
               vocab_size=262144, sliding_window=512)
PRESETS = {  # vocab_size 0 = the tokenizer's size (char/byte-level corpora)
    "gpt-tiny": dict(_GPT2, vocab_size=0, hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512,
                     max_position_embeddings=256),
    "gpt2-124m": dict(_GPT2, vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                      max_position_embeddings=1024),
    "gpt2-350m": dict(_GPT2, vocab_size=50257, hidden_size=1024, num_layers=24, num_heads=16,
                      intermediate_size=4096, max_position_embeddings=1024),
    "gpt2-1.5b": dict(_GPT2, vocab_size=50257, hidden_size=1600, num_layers=48, num_heads=25,
                      intermediate_size=6400, max_position_embeddings=1024),
    "llama-tiny": dict(_LLAMA, vocab_size=0, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                       intermediate_size=352, max_position_embeddings=2048),
    "llama-1b": dict(_LLAMA, vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                     intermediate_size=8192, max_position_embeddings=131072, rope_theta=500000.0, tie_embeddings=True,
                     layer_norm_eps=1e-5, rope_type="llama3", rope_factor=32.0, rope_low_freq_factor=1.0,
                     rope_high_freq_factor=4.0, rope_original_max_positions=8192),  # LLaMA 3.2 1B
    "llama-7b": dict(_LLAMA, vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                     intermediate_size=11008, max_position_embeddings=4096, layer_norm_eps=1e-5),
    "mistral-7b": dict(_LLAMA, vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                       intermediate_size=14336, max_position_embeddings=32768, layer_norm_eps=1e-5, sliding_window=4096),
    "qwen2.5-0.5b": dict(_LLAMA, vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                         intermediate_size=4864, max_position_embeddings=32768, rope_theta=1e6, tie_embeddings=True,
                         attention_bias="qkv"),
    "qwen3-0.6b": dict(_LLAMA, vocab_size=151936, hidden_size=1024, num_layers=28, num_heads=16, num_kv_heads=8,
                       head_dim=128, intermediate_size=3072, max_position_embeddings=40960, rope_theta=1e6,
                       tie_embeddings=True, qk_norm=True),
    "phi3-mini": dict(_LLAMA, vocab_size=32064, hidden_size=3072, num_layers=32, num_heads=32, num_kv_heads=32,
                      intermediate_size=8192, max_position_embeddings=4096, layer_norm_eps=1e-5, sliding_window=2047),
    "gemma3-tiny": dict(_GEMMA3, vocab_size=0, hidden_size=128, num_layers=6, num_heads=4, head_dim=32,
                        intermediate_size=256, max_position_embeddings=2048, sliding_window=32, query_scale=32.0,
                        sliding_window_pattern=3),
    "gemma3-270m": dict(_GEMMA3, hidden_size=640, num_layers=18, num_heads=4, intermediate_size=2048),
    "gemma-2b": dict(_LLAMA, arch="gemma", block_norms="pre", tie_embeddings=True, vocab_size=256000, hidden_size=2048,
                     num_layers=18, num_heads=8, num_kv_heads=1, intermediate_size=16384,  # heads 8 x 256
                     max_position_embeddings=8192),
    "gemma-7b": dict(_LLAMA, arch="gemma", block_norms="pre", tie_embeddings=True, vocab_size=256000, hidden_size=3072,
                     num_layers=28, num_heads=16, num_kv_heads=16, head_dim=256, intermediate_size=24576,
                     max_position_embeddings=8192),
    "gemma2-2b": dict(_LLAMA, arch="gemma", tie_embeddings=True, vocab_size=256000, hidden_size=2304, num_layers=26,
                      num_heads=8, num_kv_heads=4, head_dim=256, intermediate_size=9216, max_position_embeddings=8192,
                      sliding_window=4096, sliding_window_pattern=2, query_scale=256.0, attention_softcap=50.0,
                      logit_softcap=30.0),
}


def kv_heads(cfg) -> int:
    return cfg.num_kv_heads or cfg.num_heads


def rotary(cfg) -> bool:
    """Positions by rotary embeddings (llama, gemma), not learned ones (gpt2)."""
    return cfg.arch != "gpt2"


def windowed(cfg, layer: int) -> bool:
    """Whether `layer` attends through the sliding window: every layer, or all but each Nth (Gemma 3's)."""
    every = cfg.sliding_window_pattern
    return bool(cfg.sliding_window) and not (every and (layer + 1) % every == 0)


def layer_rope(cfg, windowed_layer: bool):
    """The rotary settings of a layer: a windowed layer's own base, unscaled, where `rope_local_theta` is set."""
    if windowed_layer and cfg.rope_local_theta:
        return dataclasses.replace(cfg, rope_theta=cfg.rope_local_theta, rope_type="default")
    return cfg


def head_dim(cfg) -> int:
    """Usually hidden_size / num_heads; LLaMA-style models may set it apart (width-pruned ones do)."""
    return cfg.head_dim or cfg.hidden_size // cfg.num_heads


ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def rope_frequencies(cfg, width: int) -> jax.Array:
    """Inverse frequencies (width/2,) of a head's rotary embedding, scaled as HF's `rope_parameters` say:
    `linear` divides them all by the factor; `llama3` divides the low ones (wavelength above
    original/low_freq_factor), keeps the high ones (below original/high_freq_factor) and blends between;
    `yarn` ramps from kept to divided across the dimensions that turn beta_fast..beta_slow times over the
    original length (HF's truncated ramp)."""
    inv_freq = 1.0 / cfg.rope_theta ** (jnp.arange(0, width, 2, dtype=jnp.float32) / width)
    if cfg.rope_type == "linear":
        return inv_freq / cfg.rope_factor
    if cfg.rope_type == "llama3":
        original, factor = cfg.rope_original_max_positions, cfg.rope_factor
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= original / high) & (wavelen <= original / low)
        return jnp.where(medium, blended, scaled)
    if cfg.rope_type == "yarn":
        def dim_of(turns):  # the dimension that turns `turns` times over the original length
            return width * math.log(cfg.rope_original_max_positions / (turns * 2 * math.pi)) / (2 * math.log(cfg.rope_theta))

        low = max(math.floor(dim_of(cfg.rope_beta_fast)), 0)
        high = min(math.ceil(dim_of(cfg.rope_beta_slow)), width - 1)
        ramp = jnp.clip((jnp.arange(width // 2, dtype=jnp.float32) - low) / ((high - low) or 0.001), 0, 1)
        return inv_freq / cfg.rope_factor * ramp + inv_freq * (1 - ramp)
    return inv_freq


def rope_attention_factor(cfg) -> float:
    """yarn's scale on cos and sin (so on the attention logits, squared); 1 otherwise."""
    if cfg.rope_type != "yarn":
        return 1.0
    return cfg.rope_attention_factor or (0.1 * math.log(cfg.rope_factor) + 1.0 if cfg.rope_factor > 1 else 1.0)


def rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array, scale: float = 1.0) -> jax.Array:
    """Rotary embedding as HF LLaMA applies it: rotate-half over (first half, second half) of head_dim;
    cos and sin times `scale` (yarn's attention factor)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (batch, length, d/2)
    cos, sin = (scale * jnp.concatenate([f(angles)] * 2, -1)[:, :, None, :] for f in (jnp.cos, jnp.sin))
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], -1)
    return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


class CausalAttention(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype, windowed_layer: bool = False):
        h, heads, kv, d = cfg.hidden_size, cfg.num_heads, kv_heads(cfg), head_dim(cfg)
        proj = dict(rngs=rngs, dtype=dtype, use_bias=cfg.arch == "gpt2")
        qkv = dict(proj, use_bias=cfg.arch == "gpt2" or cfg.attention_bias in ("qkv", "all"))
        self.query = Dense((h,), (heads, d), ("embed",), ("heads", "kv"), **qkv)
        self.key = Dense((h,), (kv, d), ("embed",), ("heads", "kv"), **qkv)
        self.value = Dense((h,), (kv, d), ("embed",), ("heads", "kv"), **qkv)
        self.out = Dense((heads, d), (h,), ("heads", "kv"), ("embed",), init_std=0.02 / math.sqrt(2 * cfg.num_layers),
                         **dict(proj, use_bias=cfg.arch == "gpt2" or cfg.attention_bias == "all"))
        self.cfg, self.dtype, self.windowed = cfg, dtype, windowed_layer
        self.dropout = Dropout(cfg.attention_dropout)
        self.rope_cfg = layer_rope(cfg, windowed_layer)
        if cfg.qk_norm:  # one scale per head dimension, shared by the heads (Qwen3, Gemma 3)
            self.query_norm = _norm(cfg, dtype, d, ("kv",))
            self.key_norm = _norm(cfg, dtype, d, ("kv",))

    def __call__(self, x, positions, masks, cache=None, cache_index=None, *, deterministic=True, rngs=None):
        """`masks` (each (batch, 1, q, k)) say which keys each query sees: all earlier ones, or those in the
        sliding window; the layer takes its own; in training (`deterministic` False) attention probabilities
        are dropped out at model.attention_dropout. With `cache` (k, v of shape (batch, slots, kv_heads,
        head_dim), or (batch, kv_heads, slots, head_dim) where `cache_heads_first`) the new keys/values are
        written at `cache_index` and attention runs over the whole cache;
        a windowed layer's cache may instead be a ring of the latest `slots` positions (`Decoder.ring`: its
        mask is then over the ring and the new keys, which it attends to before keeping the newest);
        returns (output, updated cache)."""
        drop = dict(deterministic=deterministic, rngs=rngs)
        q, k, v = (constrain(p(x, **drop), HEADS) for p in (self.query, self.key, self.value))
        if self.cfg.qk_norm:
            q, k = self.query_norm(q), self.key_norm(k)
        if rotary(self.cfg):
            inv_freq, scale = rope_frequencies(self.rope_cfg, q.shape[-1]), rope_attention_factor(self.rope_cfg)
            q, k = rope(q, positions, inv_freq, scale), rope(k, positions, inv_freq, scale)
        heads_first = cache is not None and cache_heads_first()
        if heads_first:  # the new positions only; the cache stays as it is
            k, v = (x.transpose(0, 2, 1, 3) for x in (k, v))
        axis = 2 if heads_first else 1  # the cache's slots
        if cache is not None and masks[self.windowed].shape[-1] == cache[0].shape[axis]:  # a slot per position
            k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, axis=axis)
            v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index, axis=axis)
            cache = (k, v)
        elif cache is not None:  # a ring: position p lives in slot p % slots
            slots, n = cache[0].shape[axis], k.shape[axis]
            newest = jnp.arange(max(n - slots, 0), n)  # a prefill longer than the ring keeps its last `slots`
            new = tuple(x.astype(c.dtype) for x, c in zip((k, v), cache))
            k, v = (jnp.concatenate([c, x], axis) for c, x in zip(cache, new))
            at = (slice(None),) * axis + ((cache_index + newest) % slots,)
            cache = tuple(c.at[at].set(jnp.take(x, newest, axis)) for c, x in zip(cache, new))
        y = attend(q, k, v, masks[self.windowed], self.dtype, impl=self.cfg.attention_impl,
                   scale=self.cfg.query_scale ** -0.5 if self.cfg.query_scale else None,
                   softcap=self.cfg.attention_softcap, drop=self.dropout.key(**drop), kv_heads_first=heads_first)
        return constrain(self.out(constrain(y, HEADS), **drop), ("batch", "length", "embed")), cache


class Mlp(nnx.Module):
    """gpt2: wo(act(wi(x))), GELU (tanh) by default; llama: wo(act(gate(x)) * wi(x)), SwiGLU by default."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype):
        h, inter = cfg.hidden_size, cfg.intermediate_size
        proj = dict(rngs=rngs, dtype=dtype, use_bias=cfg.arch == "gpt2" or cfg.mlp_bias)
        self.gated, self.activation = rotary(cfg), activation(cfg)
        self.wi = Dense((h,), (inter,), ("embed",), ("mlp",), **proj)
        if self.gated:
            self.gate = Dense((h,), (inter,), ("embed",), ("mlp",), **proj)
        self.wo = Dense((inter,), (h,), ("mlp",), ("embed",), init_std=0.02 / math.sqrt(2 * cfg.num_layers), **proj)

    def __call__(self, x, *, deterministic=True, rngs=None):
        act, drop = ACTIVATIONS[self.activation], dict(deterministic=deterministic, rngs=rngs)
        hidden = act(self.gate(x, **drop)) * self.wi(x, **drop) if self.gated else act(self.wi(x, **drop))
        return constrain(self.wo(constrain(hidden, ("batch", "length", "mlp")), **drop), ("batch", "length", "embed"))


_ACTIVATION = {"gpt2": "gelu_new", "llama": "silu", "gemma": "gelu_pytorch_tanh"}  # each architecture's own


def activation(cfg) -> str:
    """The MLP nonlinearity's HF name: model.activation, else the architecture's own."""
    return cfg.activation or _ACTIVATION[cfg.arch]


def _norm(cfg, dtype, width: int | None = None, names=("embed",)):
    if cfg.arch == "gpt2":
        return LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)
    return RMSNorm(width or cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype, names=names,
                   offset=1.0 if cfg.arch == "gemma" else 0.0)


def sandwich(cfg) -> bool:
    """Whether a block normalises what attention and the MLP return too (model.block_norms; arch=gemma's own:
    Gemma 2 and 3; Gemma 1's block is pre-norm only)."""
    return (cfg.block_norms or ("sandwich" if cfg.arch == "gemma" else "pre")) == "sandwich"


class Block(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); a sandwich block normalises what
    attention and the MLP return too (x + norm(attn(norm(x))))."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype, layer: int = 0):
        self.attention_norm = _norm(cfg, dtype)
        self.attention = CausalAttention(cfg, rngs=rngs, dtype=dtype, windowed_layer=windowed(cfg, layer))
        self.mlp_norm, self.mlp = _norm(cfg, dtype), Mlp(cfg, rngs=rngs, dtype=dtype)
        self.sandwich = sandwich(cfg)
        if self.sandwich:
            self.attention_post_norm, self.mlp_post_norm = _norm(cfg, dtype), _norm(cfg, dtype)
        self.dropout = Dropout(cfg.hidden_dropout)

    def __call__(self, x, positions, masks, deterministic=True, rngs=None, cache=None, cache_index=None):
        y, cache = self.attention(self.attention_norm(x), positions, masks, cache, cache_index,
                                  deterministic=deterministic, rngs=rngs)
        if self.sandwich:
            y = self.attention_post_norm(y)
        x = x + self.dropout(y, deterministic=deterministic, rngs=rngs)
        y = self.mlp(self.mlp_norm(x), deterministic=deterministic, rngs=rngs)
        if self.sandwich:
            y = self.mlp_post_norm(y)
        return x + self.dropout(y, deterministic=deterministic, rngs=rngs), cache


class Decoder(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        h = cfg.hidden_size
        self.cfg, self.dtype = cfg, dtype
        # learned positions end the sequence a model can read (and generate); rotary ones do not
        self.position_limit = cfg.max_position_embeddings if cfg.arch == "gpt2" else None
        self.token_embeddings = Embed(cfg.vocab_size, h, ("vocab", "embed"), rngs=rngs, dtype=dtype)
        if cfg.arch == "gpt2":
            self.position_embeddings = Embed(cfg.max_position_embeddings, h, (None, "embed"), rngs=rngs, dtype=dtype,
                                             init_std=0.01)
        self.dropout = Dropout(cfg.hidden_dropout)
        self.layers = nnx.List([Block(cfg, rngs=rngs, dtype=dtype, layer=i) for i in range(cfg.num_layers)])
        self.final_norm = _norm(cfg, dtype)
        if cfg.task == "sequence":  # HF's `score`: a linear layer without bias, read at the last real token
            self.score = Dense((h,), (cfg.num_labels,), ("embed",), ("labels",), rngs=rngs, dtype=dtype,
                               use_bias=False, head=True)
        elif cfg.task in ("token", "qa"):  # HF's *ForTokenClassification (after dropout), *ForQuestionAnswering
            self.score = Dense((h,), (cfg.num_labels,), ("embed",), ("labels",), rngs=rngs, dtype=dtype, head=True)
        elif not cfg.tie_embeddings:
            self.lm_head = Dense((h,), (cfg.vocab_size,), ("embed",), ("vocab",), rngs=rngs, dtype=dtype, use_bias=False)

    def _logits(self, x):
        return self.head(self.final_norm(x))

    def head(self, x):
        """Float32 logits of final-normalised hidden states (any leading shape)."""
        if self.cfg.tie_embeddings:
            logits = self.token_embeddings.attend(x)
        else:
            logits = self.lm_head(x)
        logits = constrain(logits, ("batch", "length", "vocab")).astype(jnp.float32)
        cap = self.cfg.logit_softcap
        return cap * jnp.tanh(logits / cap) if cap else logits

    def _embed(self, ids, positions):
        x = self.token_embeddings(ids)
        if self.cfg.arch == "gpt2":
            x = x + self.position_embeddings(positions)
        if self.cfg.arch == "gemma":  # in the compute dtype, as HF casts its normaliser
            x = x * jnp.asarray(math.sqrt(self.cfg.hidden_size), x.dtype)
        return x

    def _masks(self, seen, distance):
        """(all a query may see, those within the sliding window) from what it may see and how far back each
        key is; the second only where some layer slides."""
        return seen, (seen & (distance < self.cfg.sliding_window)) if self.cfg.sliding_window else seen

    def __call__(self, ids, positions, segment_ids, *, deterministic=True, rngs=None):
        """Logits (batch, length, vocab) of a packed batch: a token sees earlier tokens of its own segment."""
        return self.head(self.hidden_states(ids, positions, segment_ids, deterministic=deterministic, rngs=rngs))

    def hidden_states(self, ids, positions, segment_ids, *, deterministic=True, rngs=None):
        """The final-normalised hidden states (batch, length, embed) the head reads."""
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        causal = jnp.tril(jnp.ones((ids.shape[1], ids.shape[1]), bool))
        mask = same & causal[None] & (segment_ids > 0)[:, None, :]
        # within a document, positions count the tokens back
        masks = tuple(m[:, None] for m in self._masks(mask, positions[:, :, None] - positions[:, None, :]))
        x = self.dropout(self._embed(ids, positions), deterministic=deterministic, rngs=rngs)
        # remat keeps only what the policy saves and recomputes the rest in the backward pass
        x = run_layers(self.layers, x, lambda layer, h, r: layer(h, positions, masks, deterministic, r)[0],
                       scan=self.cfg.scan_layers, remat_policy=REMAT[self.cfg.remat], rngs=rngs)
        return self.final_norm(x)

    def classify(self, ids, attention_mask, *, deterministic=True, rngs=None):
        """Float32 scores (batch, labels) of right-padded rows (`attention_mask` 1 on real tokens), read at each
        row's last real token: what a causal model has seen all of the text at, as HF's classifiers pool."""
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        x = self.hidden_states(ids, positions, attention_mask, deterministic=deterministic, rngs=rngs)
        last = jnp.argmax(positions * (attention_mask > 0), axis=1)
        return self.score(jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]).astype(jnp.float32)

    def tag(self, ids, attention_mask, *, deterministic=True, rngs=None):
        """Float32 scores (batch, length, labels) of right-padded rows at every position (a tagger's after dropout;
        an answer-span head's start and end logits without)."""
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        x = self.hidden_states(ids, positions, attention_mask, deterministic=deterministic, rngs=rngs)
        if self.cfg.task == "token":
            x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        return constrain(self.score(x), ("batch", "length", "labels")).astype(jnp.float32)

    def ring(self, max_len: int) -> int:
        """Slots of a windowed layer's KV cache for sequences of `max_len` positions: the window when it is
        shorter (HF's sliding-window cache; a token never sees further back), else 0 (a slot per position)."""
        window = self.cfg.sliding_window
        return window if window and window < max_len else 0

    def init_cache(self, batch: int, max_len: int):
        """Each layer's (keys, values), in `cache_heads_first` layout or (batch, slots, key heads, head dim)."""
        def zeros(windowed):
            slots, heads = (windowed and self.ring(max_len)) or max_len, kv_heads(self.cfg)
            shape = (batch, *((heads, slots) if cache_heads_first() else (slots, heads)), head_dim(self.cfg))
            return jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)

        return [zeros(layer.attention.windowed) for layer in self.layers]

    def decode_step(self, ids, positions, key_valid, cache, cache_index):
        """Runs `ids` (batch, n) as positions [cache_index, cache_index + n) of the sequence `key_valid`
        (batch, max_len) says which positions of are real (left padding is not); a query sees valid positions
        up to its own (within the window on windowed layers, whose cache may be a ring). Returns (logits,
        cache)."""
        slots, keys = cache_index + jnp.arange(ids.shape[1]), jnp.arange(key_valid.shape[1])
        seen = (keys[None, :] <= slots[:, None])[None] & key_valid[:, None, :]
        masks = self._masks(seen, (slots[:, None] - keys[None, :])[None])
        ring = self.ring(key_valid.shape[1])
        if ring:  # the ring's slot j holds the latest position before cache_index that is j modulo the ring
            held = cache_index - 1 - jnp.mod(cache_index - 1 - jnp.arange(ring), ring)
            keys = jnp.concatenate([held, slots])  # then the new positions, as the layer lays its keys out
            real = (keys >= 0)[None] & jnp.take(key_valid, jnp.clip(keys, 0), axis=1)
            back = slots[:, None] - keys[None, :]
            masks = (masks[0], real[:, None, :] & ((back >= 0) & (back < ring))[None])
        masks = tuple(m[:, None] for m in masks)
        x = self._embed(ids, positions)
        new_cache = []
        for layer, c in zip(self.layers, cache):
            x, c = layer(x, positions, masks, cache=c, cache_index=cache_index)
            new_cache.append(c)
        return self._logits(x), new_cache


# ---- What the core asks of a family ---------------------------------------------------------------------

def build(cfg, *, rngs: nnx.Rngs, dtype) -> Decoder:
    return Decoder(cfg, rngs=rngs, dtype=dtype)


class Tiled(NamedTuple):
    """forward's outputs with model.vocab_tiling > 1: the hidden states and the head that turns a piece of them
    into logits, for the loss to run piece by piece."""

    hidden: jax.Array
    head: Callable[[jax.Array], jax.Array]


HEADS = ("sequence", "token", "qa")  # tasks whose head replaces the language model's


def forward(model: Decoder, batch: dict, *, deterministic: bool, rngs) -> jax.Array | Tiled:
    if model.cfg.task in HEADS:
        head = model.classify if model.cfg.task == "sequence" else model.tag
        return head(batch["input_ids"], batch["attention_mask"], deterministic=deterministic, rngs=rngs)
    args = (batch["input_ids"], batch["positions"], batch["segment_ids"])
    if model.cfg.vocab_tiling == 1:
        return model(*args, deterministic=deterministic, rngs=rngs)
    graphdef, state = nnx.split(model)  # the head as a pure function: it runs inside the loss's scan
    return Tiled(model.hidden_states(*args, deterministic=deterministic, rngs=rngs),
                 lambda x: nnx.merge(graphdef, state).head(x))


def loss_sums(outputs: jax.Array | Tiled, batch: dict, cfg) -> tuple[dict, dict]:
    if cfg.task == "qa":
        return losses.span_sums(outputs, batch["labels"], batch["attention_mask"])
    if cfg.task in HEADS:
        return losses.head_sums(outputs, batch["labels"], cfg)
    if isinstance(outputs, Tiled):
        return losses.tiled_lm_sums(outputs.hidden, outputs.head, batch["labels"], cfg.vocab_tiling, cfg.z_loss,
                                    cfg.label_smoothing), {}
    return losses.lm_sums(outputs, batch["labels"], cfg.z_loss, cfg.label_smoothing), {}


def batch_shapes(cfg, batch: int, seq_len: int) -> dict[str, tuple[int, ...]]:
    """Packed rows for a language model; a classifier's right-padded texts and one label (or one per output)
    each, a tagger's one label per token, an answer-span head's start and end token."""
    if cfg.task in HEADS:
        return {"input_ids": (batch, seq_len), "attention_mask": (batch, seq_len),
                "labels": models.label_shape(cfg, batch, seq_len)}
    return {k: (batch, seq_len) for k in ("input_ids", "labels", "segment_ids", "positions")}


def train_flops_per_token(cfg, seq_len: int) -> float:
    """3 x forward matmul FLOPs per token. Forward per layer: q/out projections 4h*q_dim (4h^2 when
    q_dim = heads x head_dim = h), k/v 4h*kv_dim, MLP 4hI (6hI for SwiGLU), attention scores + values
    4A*q_dim over the A keys a query sees on average: T/2, the causal half, as MaxText and PaLM count, or
    W - W^2/2T in a layer with a sliding window W < T (model FLOPs: the masked-out scores XLA still computes
    are not counted); plus the LM head 2hV, or a classifier's 2hL once per sequence, or a tagger's per token."""
    h, inter, window = cfg.hidden_size, cfg.intermediate_size, cfg.sliding_window
    q_dim, kv_dim = cfg.num_heads * head_dim(cfg), kv_heads(cfg) * head_dim(cfg)
    mlp = (6 if rotary(cfg) else 4) * h * inter
    slid = window * (1 - window / (2 * seq_len)) if 0 < window < seq_len else seq_len / 2
    attended = sum(slid if windowed(cfg, i) else seq_len / 2 for i in range(cfg.num_layers))
    per_layer = 4 * h * q_dim + 4 * h * kv_dim + mlp
    head = 2 * h * {"sequence": cfg.num_labels / seq_len, "token": cfg.num_labels, "qa": 2}.get(cfg.task,
                                                                                                 cfg.vocab_size)
    return 3.0 * (cfg.num_layers * per_layer + 4 * attended * q_dim + head)


def validate(cfg, seq_len: int, model_axis: int) -> None:
    if cfg.vocab_tiling > seq_len:
        raise ConfigError(f"model.vocab_tiling={cfg.vocab_tiling} cuts the sequence into more pieces than its "
                          f"data.seq_len={seq_len} positions")
    if cfg.arch not in ("gpt2", "llama", "gemma"):
        raise ConfigError(f"model.arch must be gpt2, llama or gemma, got {cfg.arch!r}")
    if cfg.block_norms not in ("", "pre", "sandwich"):
        raise ConfigError(f"model.block_norms must be pre or sandwich (empty: the arch's own), got {cfg.block_norms!r}")
    if sandwich(cfg) and cfg.arch != "gemma":
        raise ConfigError("model.block_norms=sandwich is Gemma 2's and 3's block: use arch=gemma")
    if cfg.sliding_window_pattern and not cfg.sliding_window:
        raise ConfigError("model.sliding_window_pattern says which layers skip the sliding window: set "
                          "model.sliding_window")
    if cfg.rope_local_theta and not (rotary(cfg) and cfg.sliding_window):
        raise ConfigError("model.rope_local_theta is the rotary base of windowed layers (arch=llama or gemma with "
                          "model.sliding_window)")
    if cfg.task not in ("lm", *HEADS):
        raise ConfigError(f"the decoder family trains language models (a text dataset: data.name=text), text "
                          f"classifiers (data.name=tsv, csv, jsonl), taggers (conll) and question answering (squad), "
                          f"not a {cfg.task} task")
    if cfg.task == "qa" and cfg.num_labels != 2:
        raise ConfigError(f"model.num_labels={cfg.num_labels}: an answer-span head has two outputs (start, end)")
    if cfg.attention_bias not in ("none", "qkv", "all"):
        raise ConfigError(f"model.attention_bias must be none, qkv or all, got {cfg.attention_bias!r}")
    if cfg.arch == "gpt2" and cfg.qk_norm:
        raise ConfigError("model.qk_norm normalises rotary queries and keys (arch=llama); gpt2 has no such norm")
    if cfg.arch == "gpt2" and (cfg.attention_bias != "none" or cfg.mlp_bias):
        raise ConfigError("model.attention_bias and model.mlp_bias are for arch=llama (gpt2 has biases on every "
                          "projection already)")
    if cfg.arch == "gpt2" and cfg.head_dim and cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        raise ConfigError(f"model.head_dim={cfg.head_dim}: GPT-2's heads are hidden_size / num_heads wide (set 0)")
    if rotary(cfg) and head_dim(cfg) % 2:
        raise ConfigError(f"rotary embeddings need an even head dimension, got {head_dim(cfg)}")
    if cfg.arch == "gpt2" and cfg.rope_type != "default":
        raise ConfigError("model.rope_type scales rotary positions (arch=llama); gpt2 learns its positions")
    if cfg.rope_type not in ROPE_TYPES:
        raise ConfigError(f"model.rope_type must be one of {', '.join(ROPE_TYPES)}, got {cfg.rope_type!r}")
    if not cfg.rope_factor >= 1:
        raise ConfigError(f"model.rope_factor must be >= 1 (1 = no scaling), got {cfg.rope_factor}")
    if cfg.rope_type == "llama3" and not 0 < cfg.rope_low_freq_factor < cfg.rope_high_freq_factor:
        raise ConfigError(f"model.rope_low_freq_factor={cfg.rope_low_freq_factor} must be > 0 and below "
                          f"model.rope_high_freq_factor={cfg.rope_high_freq_factor}")
    if cfg.rope_type == "yarn" and not 0 < cfg.rope_beta_slow < cfg.rope_beta_fast:
        raise ConfigError(f"model.rope_beta_slow={cfg.rope_beta_slow} must be > 0 and below "
                          f"model.rope_beta_fast={cfg.rope_beta_fast}")
    if cfg.rope_type == "yarn" and cfg.rope_attention_factor < 0:
        raise ConfigError(f"model.rope_attention_factor must be >= 0 (0 = from the factor), got {cfg.rope_attention_factor}")
    if cfg.rope_type in ("llama3", "yarn") and cfg.rope_original_max_positions <= 0:
        raise ConfigError(f"model.rope_original_max_positions must be > 0, got {cfg.rope_original_max_positions}")
    for key, size in (("model.num_heads", cfg.num_heads), ("model.intermediate_size", cfg.intermediate_size)):
        if size % model_axis:
            raise ConfigError(f"{key}={size} is not divisible by mesh.model={model_axis} (tensor parallel)")
    if cfg.arch == "gpt2" and seq_len > cfg.max_position_embeddings:
        raise ConfigError(f"data.seq_len={seq_len} exceeds model.max_position_embeddings={cfg.max_position_embeddings}")


def describe(cfg) -> str:
    kv = f", {kv_heads(cfg)} kv heads" if kv_heads(cfg) != cfg.num_heads else ""
    extras = [f"head_dim {cfg.head_dim}" * bool(cfg.head_dim),
              f"{cfg.attention_bias} attention biases" * (cfg.attention_bias != "none"), "MLP biases" * cfg.mlp_bias,
              f"sliding window {cfg.sliding_window}" * bool(cfg.sliding_window),
              f"full attention every {cfg.sliding_window_pattern} layers" * bool(cfg.sliding_window_pattern),
              f"soft caps {cfg.attention_softcap:g}/{cfg.logit_softcap:g}" * bool(cfg.attention_softcap
                                                                                  or cfg.logit_softcap),
              f"rope {cfg.rope_type} x{cfg.rope_factor:g}" * (cfg.rope_type != "default"),
              "pre-norm blocks" * (cfg.arch == "gemma" and not sandwich(cfg)),
              f"attention dropout {cfg.attention_dropout:g}" * bool(cfg.attention_dropout),
              "layers scanned" * cfg.scan_layers]
    head = f"; {models.head_summary(cfg)}" if cfg.task in HEADS else ""
    return (f"decoder {cfg.preset} ({cfg.arch}: {cfg.num_layers} layers x {cfg.hidden_size}, {cfg.num_heads} heads{kv},"
            f" vocab {cfg.vocab_size}, remat {cfg.remat}{''.join(', ' + e for e in extras if e)}{head})")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")  # any one


def tokenizer(source):
    """A character tokenizer (a folder holding chars.json, or a list of characters) or any Hugging Face
    tokenizer folder (GPT-2 BPE, SentencePiece)."""
    from pathlib import Path

    from jaxbatch.data import text

    if isinstance(source, (list, tuple)):
        return text.CharTokenizer(source)
    if (Path(source) / text.CharTokenizer.FILE).is_file():
        return text.CharTokenizer.load(source)
    from transformers import AutoTokenizer

    if Path(source).is_dir() and not any((Path(source) / f).is_file() for f in _TOKENIZER_FILES):
        # transformers would build an empty GPT-2 tokenizer from config.json alone: every text, no tokens
        raise CheckpointError(f"tokenizer: {source} holds no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"tokenizer: {source} holds no tokenizer ({e})") from e


# ---- Hugging Face conversion tables ---------------------------------------------------------------------

def hf_configure(cfg, hf: dict):
    """The shape from a GPT-2, LLaMA-style (llama, mistral, qwen2, qwen3, phi3) or Gemma 1/2/3 text config.json.
    Phi-3 is LLaMA's block with fused tensors (`hf_unfuse`), so it is exported as the LLaMA-style class
    holding the same function (MistralForCausalLM with its window)."""
    if hf.get("model_type") == "gpt2":
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
            raise CheckpointError("config.json: attention scores are scaled by 1/sqrt(head_dim) only here "
                                  "(scale_attn_weights=false and scale_attn_by_inverse_layer_idx are not supported)")
        shape = dict(arch="gpt2", vocab_size=hf["vocab_size"], hidden_size=hf["n_embd"], num_layers=hf["n_layer"],
                     num_heads=hf["n_head"], num_kv_heads=0, intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
                     max_position_embeddings=hf["n_positions"], layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                     tie_embeddings=bool(hf.get("tie_word_embeddings", True)))  # GPT2Config ties by default
        act = models.hf_activation(hf, "activation_function", _ACTIVATION["gpt2"])
    else:
        gemma = hf["model_type"] in GEMMA_TYPES
        rotated = (hf.get("rope_parameters") or {}).get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        if rotated != 1.0:  # Phi-3's option (Phi-4-mini rotates 3/4 of each head)
            raise CheckpointError(f"config.json: partial_rotary_factor {rotated} is not supported (only 1.0: rotary "
                                  f"embeddings over the whole head)")
        rope_shape = _hf_gemma(hf) if gemma else _hf_rope(hf)
        width = hf.get("head_dim") or 0
        shape = dict(arch="llama", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                     num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                     num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                     head_dim=0 if width * hf["num_attention_heads"] == hf["hidden_size"] else width,
                     intermediate_size=hf["intermediate_size"], max_position_embeddings=hf["max_position_embeddings"],
                     layer_norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                     attention_bias={"qwen2": "qkv"}.get(hf["model_type"], "all" if hf.get("attention_bias") else "none"),
                     qk_norm=hf["model_type"] == "qwen3",
                     mlp_bias=bool(hf.get("mlp_bias")), sliding_window=_hf_window(hf), **rope_shape)
        act = _hf_activation(hf)
        if gemma:
            shape.update(arch="gemma", qk_norm=hf["model_type"] == "gemma3_text",
                         tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                         query_scale=float(hf.get("query_pre_attn_scalar") or 0), **_hf_layer_kinds(hf))
        if hf["model_type"] == "gemma":  # Gemma 1: pre-norm blocks
            shape.update(block_norms="pre")
    models.check_shape(cfg, shape)
    head = models.hf_head(cfg, hf, {"ForSequenceClassification": "sequence", "ForTokenClassification": "token",
                                    "ForQuestionAnswering": "qa"}) or {"task": "lm"}
    return dataclasses.replace(cfg, **shape, **head, activation=act)


GEMMA_TYPES = ("gemma", "gemma2", "gemma3_text")  # Gemma 1, 2 and 3's text decoders: config.json's model_type


def _hf_activation(hf: dict) -> str:
    """model.activation from a LLaMA-style or Gemma config.json: Gemma 2 and 3 name it `hidden_activation`;
    Gemma 1 reads `hidden_act` (a `hidden_activation` there, null in files transformers 4 wrote, is not read),
    whose legacy "gelu" transformers reads as the tanh approximation."""
    if hf["model_type"] == "gemma":
        legacy = {"hidden_act": _ACTIVATION["gemma"]} if hf.get("hidden_act") == "gelu" else {}
        return models.hf_activation({**hf, **legacy}, "hidden_act", _ACTIVATION["gemma"])
    if hf["model_type"] in GEMMA_TYPES:
        return models.hf_activation(hf, "hidden_activation", _ACTIVATION["gemma"])
    return models.hf_activation(hf, "hidden_act", _ACTIVATION["llama"])


def _hf_window(hf: dict) -> int:
    """One sliding window for every layer, or none: mistral's `sliding_window` (null = none); qwen2's
    `layer_types` (or `use_sliding_window` from layer `max_window_layers` on); phi3's and gemma's
    `sliding_window` (Gemma's pattern of layers: `_hf_layer_kinds`). Mixed layers are refused
    otherwise."""
    n, window = hf["num_hidden_layers"], hf.get("sliding_window") or 0
    if hf["model_type"] in ("mistral", "phi3", "gemma2", "gemma3_text") or not window:
        return window
    kinds = hf.get("layer_types") or [
        "sliding_attention" if hf.get("use_sliding_window") and i >= hf.get("max_window_layers", n) else "full_attention"
        for i in range(n)]
    if len(set(kinds)) > 1:
        raise CheckpointError("config.json: a sliding window on some layers only (layer_types) is not supported")
    return window if kinds[0] == "sliding_attention" else 0


def _hf_layer_kinds(hf: dict) -> dict:
    """Gemma's `layer_types`: windowed layers with every Nth attending to all (model.sliding_window_pattern;
    without layer_types, every 2nd in Gemma 2, `sliding_window_pattern` or every 6th in Gemma 3); no window
    when every layer attends to all. Other layouts are refused."""
    n = hf["num_hidden_layers"]
    if hf["model_type"] == "gemma":  # Gemma 1 attends to all tokens in every layer
        return dict(sliding_window=0, sliding_window_pattern=0, rope_local_theta=0.0)
    every = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or (
        2 if hf["model_type"] == "gemma2" else 6)
    kinds = hf.get("layer_types") or ["full_attention" if (i + 1) % every == 0 else "sliding_attention"
                                      for i in range(n)]
    if set(kinds) == {"full_attention"}:
        return dict(sliding_window=0, sliding_window_pattern=0, rope_local_theta=0.0)
    full = [i for i, kind in enumerate(kinds) if kind == "full_attention"]
    every = full[0] + 1 if full else 0
    if kinds != ["full_attention" if every and (i + 1) % every == 0 else "sliding_attention" for i in range(n)]:
        raise CheckpointError(f"config.json: layer_types {kinds} is not a sliding window on all layers but every "
                              f"Nth, the layout supported")
    return dict(sliding_window_pattern=every)


def _hf_gemma(hf: dict) -> dict:
    """Gemma 2's and 3's soft-capping and rotary fields: Gemma 3's `rope_parameters` per layer kind
    (transformers 5), or `rope_theta`, `rope_scaling` and `rope_local_base_freq` (older files), the windowed
    layers' unscaled; Gemma 2 rotates every layer alike."""
    if hf.get("use_bidirectional_attention"):
        raise CheckpointError("config.json: use_bidirectional_attention (an encoder) is not supported")
    caps = dict(attention_softcap=float(hf.get("attn_logit_softcapping") or 0),
                logit_softcap=float(hf.get("final_logit_softcapping") or 0))
    params = hf.get("rope_parameters") or {}
    if hf["model_type"] in ("gemma", "gemma2"):
        return dict(_hf_rope(hf), **caps)
    if "full_attention" in params:
        local = params.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise CheckpointError("config.json: the sliding layers' rope_parameters must be unscaled (rope_type "
                                  "default)")
        return dict(_hf_rope({"rope_parameters": params["full_attention"]}),
                    rope_local_theta=float(local.get("rope_theta", 10000.0)), **caps)
    return dict(_hf_rope(hf), rope_local_theta=float(hf.get("rope_local_base_freq", 10000.0)), **caps)


def _hf_rope(hf: dict) -> dict:
    """The rotary fields of a LLaMA config.json: transformers 5 writes `rope_parameters` (theta inside),
    older ones `rope_scaling` (`type` or `rope_type`) beside a top-level `rope_theta`."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise CheckpointError(f"config.json: rope_type {kind!r} is not supported (only {', '.join(ROPE_TYPES)})")
    fields = dict(rope_type=kind, rope_theta=float(params.get("rope_theta", hf.get("rope_theta", 10000.0))))
    need = _ROPE_NEEDS.get(kind, ())
    missing = [k for k in need if params.get(k) is None]
    if missing:
        raise CheckpointError(f"config.json: rope_type {kind!r} needs {', '.join(missing)}")
    if kind == "yarn" and (params.get("mscale") or params.get("mscale_all_dim") or params.get("truncate") is False):
        raise CheckpointError("config.json: yarn with mscale, mscale_all_dim or truncate=false is not supported")
    for key in need + tuple(k for k in _ROPE_OPTIONAL.get(kind, ()) if params.get(k)):
        fields[_ROPE_KEYS[key]] = int(params[key]) if key.startswith("original") else float(params[key])
    return fields


# rope_parameters keys by rope_type: those a config.json must give, and those it may (written when set)
_ROPE_NEEDS = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                                 "original_max_position_embeddings"),
               "yarn": ("factor", "original_max_position_embeddings")}
_ROPE_OPTIONAL = {"yarn": ("beta_fast", "beta_slow", "attention_factor")}
_ROPE_KEYS = dict(factor="rope_factor", low_freq_factor="rope_low_freq_factor", high_freq_factor="rope_high_freq_factor",
                  original_max_position_embeddings="rope_original_max_positions", beta_fast="rope_beta_fast",
                  beta_slow="rope_beta_slow", attention_factor="rope_attention_factor")


def _rope_parameters(cfg) -> dict:
    """`_hf_rope` inverted: the rope_parameters of a config.json transformers 5 reads."""
    keys = _ROPE_NEEDS.get(cfg.rope_type, ()) + tuple(
        k for k in _ROPE_OPTIONAL.get(cfg.rope_type, ()) if getattr(cfg, _ROPE_KEYS[k]))
    return {"rope_theta": cfg.rope_theta, "rope_type": cfg.rope_type, **{k: getattr(cfg, _ROPE_KEYS[k]) for k in keys}}


def hf_key_map(cfg) -> dict[str, tuple[str, str]]:
    """jaxbatch parameter name -> (HF tensor name, layout): the architecture's table, and an untied output
    layer, which is `lm_head` (a torch Linear) in every class, or a classifier's `score` (a tagger's with a bias;
    GPT-2's tagger names it `classifier`)."""
    m = _gpt2_key_map(cfg) if cfg.arch == "gpt2" else _llama_key_map(cfg)
    if cfg.task == "sequence":
        m["score.kernel"] = ("score.weight", "t")
    elif cfg.task in ("token", "qa"):
        name = "qa_outputs" if cfg.task == "qa" else "classifier" if cfg.arch == "gpt2" else "score"
        m["score.kernel"], m["score.bias"] = (f"{name}.weight", "t"), (f"{name}.bias", "copy")
    elif not cfg.tie_embeddings:
        m["lm_head.kernel"] = ("lm_head.weight", "t")
    return m


def _gpt2_key_map(cfg) -> dict[str, tuple[str, str]]:
    """GPT-2's Conv1D weights are already (in, out); its fused c_attn is split into thirds (`models.hf_part`)."""
    m = {"token_embeddings.embedding": ("transformer.wte.weight", "copy"),
         "position_embeddings.embedding": ("transformer.wpe.weight", "copy"),
         "final_norm.scale": ("transformer.ln_f.weight", "copy"), "final_norm.bias": ("transformer.ln_f.bias", "copy")}
    for i in range(cfg.num_layers):
        ours, theirs = f"layers.{i}", f"transformer.h.{i}"
        h = cfg.hidden_size
        for j, name in enumerate(("query", "key", "value")):
            third = models.hf_part(-1, j * h, (j + 1) * h, "heads_last")
            m[f"{ours}.attention.{name}.kernel"] = (f"{theirs}.attn.c_attn.weight", third)
            m[f"{ours}.attention.{name}.bias"] = (f"{theirs}.attn.c_attn.bias", third)
        m[f"{ours}.attention.out.kernel"] = (f"{theirs}.attn.c_proj.weight", "heads_in")
        m[f"{ours}.attention.out.bias"] = (f"{theirs}.attn.c_proj.bias", "copy")
        for norm, hf_norm in (("attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
            m[f"{ours}.{norm}.scale"] = (f"{theirs}.{hf_norm}.weight", "copy")
            m[f"{ours}.{norm}.bias"] = (f"{theirs}.{hf_norm}.bias", "copy")
        for ours_mlp, hf_mlp in (("wi", "c_fc"), ("wo", "c_proj")):
            m[f"{ours}.mlp.{ours_mlp}.kernel"] = (f"{theirs}.mlp.{hf_mlp}.weight", "copy")
            m[f"{ours}.mlp.{ours_mlp}.bias"] = (f"{theirs}.mlp.{hf_mlp}.bias", "copy")
    return m


def _llama_key_map(cfg) -> dict[str, tuple[str, str]]:
    """LLaMA-style and Gemma classes: torch Linear weights, (out, in)."""
    m = {"token_embeddings.embedding": ("model.embed_tokens.weight", "copy"),
         "final_norm.scale": ("model.norm.weight", "copy")}
    for i in range(cfg.num_layers):
        ours, theirs = f"layers.{i}", f"model.layers.{i}"
        for name, hf_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            m[f"{ours}.attention.{name}.kernel"] = (f"{theirs}.self_attn.{hf_name}.weight", "qkv_kernel")
            if cfg.attention_bias in ("qkv", "all"):
                m[f"{ours}.attention.{name}.bias"] = (f"{theirs}.self_attn.{hf_name}.bias", "qkv_bias")
        if cfg.attention_bias == "all":
            m[f"{ours}.attention.out.bias"] = (f"{theirs}.self_attn.o_proj.bias", "copy")
        if cfg.qk_norm:
            m[f"{ours}.attention.query_norm.scale"] = (f"{theirs}.self_attn.q_norm.weight", "copy")
            m[f"{ours}.attention.key_norm.scale"] = (f"{theirs}.self_attn.k_norm.weight", "copy")
        m[f"{ours}.attention.out.kernel"] = (f"{theirs}.self_attn.o_proj.weight", "out_kernel")
        m[f"{ours}.attention_norm.scale"] = (f"{theirs}.input_layernorm.weight", "copy")
        if sandwich(cfg):  # HF's post_attention_layernorm is then the norm after attention, not before the MLP
            m[f"{ours}.attention_post_norm.scale"] = (f"{theirs}.post_attention_layernorm.weight", "copy")
            m[f"{ours}.mlp_norm.scale"] = (f"{theirs}.pre_feedforward_layernorm.weight", "copy")
            m[f"{ours}.mlp_post_norm.scale"] = (f"{theirs}.post_feedforward_layernorm.weight", "copy")
        else:
            m[f"{ours}.mlp_norm.scale"] = (f"{theirs}.post_attention_layernorm.weight", "copy")
        for ours_mlp, hf_mlp in (("gate", "gate_proj"), ("wi", "up_proj"), ("wo", "down_proj")):
            m[f"{ours}.mlp.{ours_mlp}.kernel"] = (f"{theirs}.mlp.{hf_mlp}.weight", "t")
            if cfg.mlp_bias:
                m[f"{ours}.mlp.{ours_mlp}.bias"] = (f"{theirs}.mlp.{hf_mlp}.bias", "copy")
    return m


def hf_expected_unused(name: str, cfg) -> bool:
    """Buffers some checkpoints carry (GPT-2's causal-mask `attn.bias`, rotary `inv_freq`), the tied head, and a
    language model's head under a classifier (which reads `score` instead)."""
    return name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")) or (
        (cfg.tie_embeddings or cfg.task != "lm") and name == "lm_head.weight")


def hf_unfuse(tensors: dict, cfg) -> dict:
    """Phi-3 stores each layer's query, key and value projections as one `qkv_proj` and the MLP's gate and up
    projections as one `gate_up_proj` (gate first): split into LLaMA's tensors, which the table maps."""
    q, kv = cfg.num_heads * head_dim(cfg), kv_heads(cfg) * head_dim(cfg)
    out = {}
    for name, x in tensors.items():
        fused = next((f for f in ("self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight") if name.endswith(f)), None)
        if fused is None:
            out[name] = x
            continue
        stem, rows = name[: -len(fused)], (q + 2 * kv if fused.startswith("self") else 2 * cfg.intermediate_size)
        if x.shape[0] != rows:
            raise ValueError(f"tensor {name} has {x.shape[0]} rows; config.json's shape needs {rows}")
        if fused.startswith("self"):
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), np.split(x, [q, q + kv])):
                out[f"{stem}self_attn.{part}.weight"] = piece
        else:
            out[f"{stem}mlp.gate_proj.weight"], out[f"{stem}mlp.up_proj.weight"] = np.split(x, 2)
    return out


def hf_normalize_name(name: str) -> str:
    """The original GPT-2 checkpoints name the trunk without its `transformer.` prefix; LLaMA's, Qwen2's and
    Qwen3's *ForQuestionAnswering keep theirs under `transformer.`, not `model.`."""
    if name.startswith(("transformer.embed_tokens.", "transformer.layers.", "transformer.norm.")):
        return "model." + name[len("transformer."):]
    return "transformer." + name if name.startswith(("h.", "wte.", "wpe.", "ln_f.")) else name


QA_TRUNK = ("llama", "qwen2", "qwen3")  # model_types whose *ForQuestionAnswering names its trunk `transformer`


def hf_tensor_name(name: str, cfg) -> str:
    """A stored name: the table's, but the trunk of a LLaMA, Qwen2 or Qwen3 *ForQuestionAnswering under
    `transformer.`."""
    if cfg.task == "qa" and name.startswith("model.") and _lm_config(cfg)["model_type"] in QA_TRUNK:
        return "transformer." + name[len("model."):]
    return name


def hf_config(cfg, label_names=None) -> dict:
    """config.json of the transformers class that holds the model: its *ForCausalLM (GPT2LMHeadModel), or under
    task=sequence the architecture's *ForSequenceClassification with the label set and `pad_token_id` (left
    None for export to fill in from the tokenizer: the classifier reads the last token that is not it), under
    task=token its *ForTokenClassification with the label set and the head's dropout."""
    out = _lm_config(cfg)
    if cfg.task == "lm":
        return out
    stem = out["architectures"][0].removesuffix("ForCausalLM").removesuffix("LMHeadModel")
    if cfg.task == "qa":
        if stem not in ("GPT2", "Llama", "Mistral", "Qwen2", "Qwen3"):
            raise ConfigError(f"transformers has no question-answering class of {stem} to export to (GPT-2, LLaMA, "
                              f"Mistral, Qwen2 and Qwen3 have one)")
        return {**out, "architectures": [f"{stem}ForQuestionAnswering"], **models.hf_labels(cfg, label_names)}
    if cfg.task == "token":
        if stem == "Gemma3":
            raise ConfigError("transformers has no token classifier of Gemma 3's text model to export to")
        return {**out, "architectures": [f"{stem}ForTokenClassification"], "classifier_dropout": cfg.hidden_dropout,
                **models.hf_labels(cfg, label_names)}
    stem = {"Gemma3": "Gemma3Text"}.get(stem, stem)  # Gemma3ForSequenceClassification is the multimodal one
    return {**out, "architectures": [f"{stem}ForSequenceClassification"], "pad_token_id": None,
            **models.hf_labels(cfg, label_names)}


def _lm_config(cfg) -> dict:
    if cfg.arch == "gpt2" and cfg.sliding_window:
        raise ConfigError("a gpt2-arch model with model.sliding_window has no Hugging Face class to export to")
    gemma_only = [k for k in ("sliding_window_pattern", "rope_local_theta", "attention_softcap", "logit_softcap")
                  if getattr(cfg, k)] + ["query_scale"] * (cfg.query_scale not in (0, head_dim(cfg)))
    if cfg.arch != "gemma" and gemma_only:  # GPT-2's and LLaMA's classes would drop it: another function
        raise ConfigError(f"no Hugging Face class holds this model: model.{gemma_only[0]} with arch={cfg.arch} "
                          f"(Gemma's classes hold it: arch=gemma)")
    if cfg.arch == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
                "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
                "n_inner": cfg.intermediate_size, "n_positions": cfg.max_position_embeddings,
                "layer_norm_epsilon": cfg.layer_norm_eps, "activation_function": activation(cfg),
                "tie_word_embeddings": cfg.tie_embeddings, "resid_pdrop": cfg.hidden_dropout,
                "embd_pdrop": cfg.hidden_dropout,
                "attn_pdrop": cfg.attention_dropout, "bos_token_id": None, "eos_token_id": None}
    common = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
              "num_attention_heads": cfg.num_heads, "num_key_value_heads": kv_heads(cfg), "head_dim": head_dim(cfg),
              "intermediate_size": cfg.intermediate_size, "max_position_embeddings": cfg.max_position_embeddings,
              "rms_norm_eps": cfg.layer_norm_eps, "rope_parameters": _rope_parameters(cfg), "hidden_act": activation(cfg),
              "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": None, "eos_token_id": None,
              "pad_token_id": None, "attention_dropout": cfg.attention_dropout}
    window = cfg.sliding_window or None
    if cfg.arch == "gemma":
        return _hf_gemma_config(cfg, common, window)
    kind = "sliding_attention" if window else "full_attention"
    qwen_window = {"sliding_window": window, "use_sliding_window": bool(window), "max_window_layers": 0,
                   "layer_types": [kind] * cfg.num_layers}  # how Qwen2 and Qwen3 configs say it, every layer alike
    if cfg.qk_norm:  # the transformers class with query/key norms
        if cfg.attention_bias == "qkv" or cfg.mlp_bias:
            raise ConfigError("no Hugging Face class holds this model: model.qk_norm (Qwen3) with qkv-only attention "
                              "biases or mlp_bias")
        return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **common,
                "attention_bias": cfg.attention_bias == "all", **qwen_window}
    if (cfg.attention_bias == "all" or cfg.mlp_bias) and (window or cfg.attention_bias == "qkv"):
        raise ConfigError("no Hugging Face class holds this model: attention_bias=all or mlp_bias (LLaMA's options) "
                          "with a sliding window or qkv biases")
    if cfg.attention_bias == "qkv":  # the transformers class with exactly these biases
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **common, **qwen_window}
    if window:
        return {"architectures": ["MistralForCausalLM"], "model_type": "mistral", **common, "sliding_window": window}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common,
            "attention_bias": cfg.attention_bias == "all", "mlp_bias": cfg.mlp_bias}


def _hf_gemma_config(cfg, common: dict, window: int | None) -> dict:
    """Gemma3ForCausalLM's config.json (query/key norms: rotary settings per layer kind) or Gemma2ForCausalLM's
    (every layer rotating alike), with the layers' kinds written out."""
    if cfg.attention_bias == "qkv" or cfg.mlp_bias:
        raise ConfigError("no Hugging Face class holds this model: arch=gemma with qkv-only attention biases or "
                          "mlp_bias")
    full = _rope_parameters(cfg)
    if not cfg.qk_norm and cfg.rope_local_theta not in (0.0, cfg.rope_theta):
        raise ConfigError("no Hugging Face class holds this model: arch=gemma with model.rope_local_theta but "
                          "without model.qk_norm (Gemma 2 rotates every layer alike; Gemma 3 normalises queries)")
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_theta} if cfg.rope_local_theta else full
    common = {k: v for k, v in common.items() if k != "hidden_act"}
    scale = cfg.query_scale or head_dim(cfg)  # an int where it is whole: transformers' config class insists
    out = {**common, "hidden_activation": activation(cfg), "attention_bias": cfg.attention_bias == "all",
           "query_pre_attn_scalar": int(scale) if float(scale).is_integer() else scale, "sliding_window": window,
           "layer_types": ["sliding_attention" if windowed(cfg, i) else "full_attention"
                           for i in range(cfg.num_layers)],
           "final_logit_softcapping": cfg.logit_softcap or None,
           "attn_logit_softcapping": cfg.attention_softcap or None}
    if not sandwich(cfg):  # Gemma 1: every layer attends to all, no caps, scores over sqrt(head_dim)
        if (cfg.qk_norm or window or cfg.logit_softcap or cfg.attention_softcap
                or cfg.query_scale not in (0, head_dim(cfg))):
            raise ConfigError("no Hugging Face class holds this model: model.block_norms=pre (Gemma 1) with "
                              "query/key norms, a sliding window, soft caps or model.query_scale")
        if activation(cfg) == "gelu":  # GemmaConfig reads a "gelu" as the tanh approximation
            raise ConfigError("no Hugging Face class holds this model: a Gemma 1 block with exact (erf) GELU")
        return {"architectures": ["GemmaForCausalLM"], "model_type": "gemma", **common,
                "hidden_act": activation(cfg), "attention_bias": cfg.attention_bias == "all",
                "rope_parameters": full}
    if cfg.qk_norm:
        return {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", **out,
                "rope_parameters": {"full_attention": full, "sliding_attention": local}}
    return {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", **out, "rope_parameters": full}


FAMILY = models.register(models.Family(
    name="decoder", presets=PRESETS, build=build, forward=forward, loss_sums=loss_sums, batch_shapes=batch_shapes,
    train_flops_per_token=train_flops_per_token, validate=validate, describe=describe, tokenizer=tokenizer,
    hf=models.HfMapping(model_types=("gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", *GEMMA_TYPES),
                        key_map=hf_key_map, configure=hf_configure,
                        hf_config=hf_config, expected_unused=hf_expected_unused, normalize_name=hf_normalize_name,
                        tensor_name=hf_tensor_name,
                        unfuse=hf_unfuse)))
