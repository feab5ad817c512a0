"""A small sentence-transformers model built offline, standing in for a user's own model.

``build_character_model(path, characters)`` writes a BERT with no transformer layers
whose vocabulary is the given characters: a text's embedding is the mean of its
characters' (seeded, random) vectors, so texts sharing most characters are close and
texts sharing few are not. It is a real sentence-transformers model directory, loaded
by ``SentenceTransformer(path)`` like any model a user brings with
``embedding_model_path``; its tokenizer knows only these characters, so every other
text is mostly ``[UNK]`` to it (which the contract's unreadable-text rule must see).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_character_model(
    path: Path, characters: Iterable[str], *, dimension: int = 256, seed: int = 7
) -> Path:
    """Save the model under ``path`` and return it."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = SPECIAL_TOKENS + sorted(
        {c for c in characters if not c.isspace()} - set(SPECIAL_TOKENS)
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(path / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=dimension,
        num_hidden_layers=0,  # embeddings only: the vector of a text is its bag of characters
        num_attention_heads=1,
        intermediate_size=dimension,
        max_position_embeddings=512,
    )
    bert = BertModel(config, add_pooling_layer=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bert.embeddings.word_embeddings.weight.copy_(
            torch.randn(len(vocab), dimension, generator=generator)
        )
        bert.embeddings.position_embeddings.weight.zero_()
        bert.embeddings.token_type_embeddings.weight.zero_()
    bert.save_pretrained(path)
    tokenizer.save_pretrained(path)
    transformer = models.Transformer(str(path))
    pooling = models.Pooling(dimension, pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(path))
    return path
