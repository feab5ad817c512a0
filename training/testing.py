"""Tiny local models for tests and dry runs: built from a config, nothing downloaded.

* ``tiny_bert(path)``: a 2-layer, 32-wide BERT with the MiniLM tokenizer (seconds to
  fine-tune; any AutoModelForSequenceClassification-compatible directory works the same).
* ``tiny_causal_lm(path, corpus)``: a 2-layer GPT-2 with a word-level tokenizer built
  from ``corpus``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def tiny_bert(path: Path | str, *, seed: int = 0) -> Path:
    """Write a tiny BERT base model (random weights) and a real tokenizer to ``path``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from training.classifier import _quiet_hf, resolve_base_model

    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    with _quiet_hf():
        tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(None))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target


def tiny_causal_lm(
    path: Path | str, corpus: Iterable[str], *, seed: int = 0, pretrain_steps: int = 0
) -> Path:
    """Write a tiny GPT-2 and a word-level tokenizer over ``corpus`` to ``path``.

    ``pretrain_steps`` > 0 first trains the whole model on the corpus, so it is a
    (tiny) language model with opinions that a LoRA adapter then has to change.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<eos>"])
    texts = list(corpus)
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    if pretrain_steps > 0:
        batch = tokenizer([t + " <eos>" for t in texts], padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(pretrain_steps):
            model(**batch, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target


__all__ = ["tiny_bert", "tiny_causal_lm"]
