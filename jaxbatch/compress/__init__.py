"""Model compression on the model-agnostic core: magnitude pruning (prune.py: masks while training, or one
shot), int8 post-training quantization (quantize.py), low-rank factorisation (lowrank.py), their storage
(storage.py) and the `jaxbatch compress` pass that chains them (pipeline.py).

Compression works on the layer types every family is built from (`layers.Dense`, `layers.Embed`), never on
a family's names: a compressed model is the family's model with some of those modules swapped for their
compressed forms. The swap is recorded in the spec (`model.quant`, `model.quant_act`, `model.quant_exclude`,
`model.lowrank`), so `restructure` rebuilds the same structure from a saved spec, and predict / evaluate /
generate restore a compressed model like any other.
"""

from __future__ import annotations

import re
from flax import nnx

from jaxbatch.errors import ConfigError
from jaxbatch.models.layers import Dense, Embed


def modules(model: nnx.Module, kind) -> list[tuple[str, nnx.Module]]:
    """(dotted path, module) of every `kind` module in the model, in a fixed order."""
    return [(".".join(str(k) for k in path), m) for path, m in nnx.iter_graph(model) if isinstance(m, kind)]


def replace(model: nnx.Module, path: str, new: nnx.Module) -> None:
    """Puts `new` where the module at dotted `path` was (an attribute, or a list item)."""
    *parents, last = path.split(".")
    node = model
    for key in parents:
        node = node[int(key)] if key.isdigit() else getattr(node, key)
    if last.isdigit():
        node[int(last)] = new
    else:
        setattr(node, last, new)


def parse_ranks(text: str) -> dict[str, int]:
    """'path:rank,path:rank' (model.lowrank) -> {path: rank}."""
    ranks = {}
    for item in filter(None, text.split(",")):
        path, _, rank = item.rpartition(":")
        if not path or not rank.isdigit() or int(rank) < 1:
            raise ConfigError(f"model.lowrank: {item!r} is not module.path:rank")
        ranks[path] = int(rank)
    return ranks


def validate(model_cfg) -> None:
    from jaxbatch.compress import quantize

    if model_cfg.quant not in ("", "int8"):
        raise ConfigError(f"model.quant must be '' or 'int8', got {model_cfg.quant!r}")
    if model_cfg.quant_act not in quantize.ACTIVATIONS:
        raise ConfigError(f"model.quant_act must be one of {', '.join(quantize.ACTIVATIONS)}, got {model_cfg.quant_act!r}")
    try:
        re.compile(model_cfg.quant_exclude)
    except re.error as e:
        raise ConfigError(f"model.quant_exclude is not a regular expression: {e}") from e
    parse_ranks(model_cfg.lowrank)


def restructure(model: nnx.Module, model_cfg) -> nnx.Module:
    """The family's model with the compressed modules the spec names (shapes only: values are loaded or
    computed by the pass). Low-rank first, so that int8 then applies to the factors."""
    from jaxbatch.compress import lowrank, quantize

    ranks = parse_ranks(model_cfg.lowrank)
    if ranks:
        dense = dict(modules(model, Dense))
        for path, rank in ranks.items():
            if path not in dense:
                raise ConfigError(f"model.lowrank names {path!r}, which is not a dense layer of this model")
            replace(model, path, lowrank.LowRankDense(dense[path], rank))
    if model_cfg.quant:
        for path, m in quantizable(model, model_cfg):
            new = quantize.QuantDense(m, model_cfg.quant_act) if isinstance(m, Dense) else quantize.QuantEmbed(m)
            replace(model, path, new)
    return model


def quantizable(model, model_cfg, kind=(Dense, Embed)) -> list[tuple[str, nnx.Module]]:
    """(path, module) of the `kind` modules int8 applies to: all but those matching model.quant_exclude."""
    exclude = model_cfg.quant_exclude
    return [(path, m) for path, m in modules(model, kind) if not (exclude and re.search(exclude, path))]
