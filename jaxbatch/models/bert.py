"""BERT encoder with sequence- and token-classification heads, numerically matching Hugging Face's
`BertModel` (post-LayerNorm blocks, erf GELU, `layer_norm_eps` from config, padding mask)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxbatch.mesh import constrain
from jaxbatch.models.layers import Dense, Embed, LayerNorm, Mlp, SelfAttention


class BertLayer(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype):
        self.attention = SelfAttention(cfg.hidden_size, cfg.num_heads, rngs=rngs, dtype=dtype)
        self.attention_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)
        self.mlp = Mlp(cfg.hidden_size, cfg.intermediate_size, rngs=rngs, dtype=dtype)
        self.output_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype)
        self.dropout = nnx.Dropout(cfg.hidden_dropout)

    def __call__(self, x, mask, *, deterministic: bool, rngs: nnx.Rngs | None):
        drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)  # noqa: E731
        x = self.attention_norm(x + drop(self.attention(x, mask)))
        return self.output_norm(x + drop(self.mlp(x)))


class BertEncoder(nnx.Module):
    """Embeddings + N post-LN Transformer layers; returns the last hidden state (batch, length, embed)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        h = cfg.hidden_size
        self.word_embeddings = Embed(cfg.vocab_size, h, ("vocab", "embed"), rngs=rngs, dtype=dtype)
        self.position_embeddings = Embed(cfg.max_position_embeddings, h, (None, "embed"), rngs=rngs, dtype=dtype)
        self.token_type_embeddings = Embed(cfg.type_vocab_size, h, (None, "embed"), rngs=rngs, dtype=dtype)
        self.embeddings_norm = LayerNorm(h, cfg.layer_norm_eps, dtype=dtype)
        self.dropout = nnx.Dropout(cfg.hidden_dropout)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs, dtype=dtype) for _ in range(cfg.num_layers)])

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        positions = jnp.arange(input_ids.shape[1])[None, :]
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        x = constrain(self.dropout(self.embeddings_norm(x), deterministic=deterministic, rngs=rngs),
                      ("batch", "length", "embed"))
        mask = attention_mask.astype(bool)[:, None, None, :]  # (batch, heads, q, k), broadcast
        for layer in self.layers:
            x = layer(x, mask, deterministic=deterministic, rngs=rngs)
        return x


class BertClassifier(nnx.Module):
    """BERT with a token-classification head (`task='token'`: logits per token) or a sequence head
    (`task='sequence'`: tanh pooler on [CLS] + dense, logits per example), as HF's
    BertFor{Token,Sequence}Classification."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.task, self.dtype = cfg.task, dtype
        self.encoder = BertEncoder(cfg, rngs=rngs, dtype=dtype)
        if cfg.task == "sequence":
            self.pooler = Dense((cfg.hidden_size,), (cfg.hidden_size,), ("embed",), (None,), rngs=rngs, dtype=dtype)
        self.dropout = nnx.Dropout(cfg.hidden_dropout)
        self.classifier = Dense((cfg.hidden_size,), (cfg.num_labels,), ("embed",), ("labels",), rngs=rngs,
                                dtype=dtype)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        x = self.encoder(input_ids, attention_mask, token_type_ids, deterministic=deterministic, rngs=rngs)
        if self.task == "sequence":
            x = jnp.tanh(self.pooler(x[:, 0]))
        logits = self.classifier(self.dropout(x, deterministic=deterministic, rngs=rngs))
        return logits.astype(jnp.float32)
