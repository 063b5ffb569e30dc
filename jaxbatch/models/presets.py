"""Named BERT shapes. `tiny` is for tests; the others match the published checkpoints."""

from __future__ import annotations

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256,
                 max_position_embeddings=128),
    "minilm-l6": dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
                      max_position_embeddings=512),
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                      max_position_embeddings=512),
    "bert-large": dict(vocab_size=30522, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
                       max_position_embeddings=512),
}


def apply(model_cfg) -> None:
    """Fills the shape fields of a ModelConfig from its `preset` ("custom" leaves them alone)."""
    if model_cfg.preset == "custom":
        return
    if model_cfg.preset not in PRESETS:
        from jaxbatch.config import ConfigError

        raise ConfigError(f"model.preset={model_cfg.preset!r} is unknown; choose from "
                          f"{', '.join(PRESETS)} or 'custom'")
    for key, value in PRESETS[model_cfg.preset].items():
        setattr(model_cfg, key, value)
