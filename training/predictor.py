"""Serving an intent adapter: ``Predictor(adapter_dir).predict(texts)``.

Loads the base model the adapter was trained on (from its ``training_config.json``,
offline), checks the adapter's weights, and predicts intents with confidences. The
trainer is ``training.classifier``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.classifier import (
    TRAINING_CONFIG_FILE,
    _base_model_from_ref,
    _check_adapter_weights,
    _load_base_classifier,
    _quiet_hf,
    check_adapter_dir,
    read_label_map,
    resolve_device,
    set_threads,
)
from training.errors import AdapterError


@dataclass(frozen=True, slots=True)
class Prediction:
    """An intent and the softmax probability the model gave it."""

    intent: str
    confidence: float


class Predictor:
    """Base model + LoRA adapter, predicting intents in batches.

    >>> predictor = Predictor(adapter_dir)            # or Predictor.from_registry(registry)
    >>> predictor.predict(["how many days to get to Lyon?"])
    [Prediction(intent='shipping', confidence=0.93)]
    """

    def __init__(
        self,
        adapter_dir: Path | str,
        *,
        base_model_path: Path | str | None = None,
        device: str = "auto",
        batch_size: int = 64,
        version: str | None = None,
        torch_threads: int | None = None,
    ) -> None:
        set_threads(torch_threads)
        adapter = check_adapter_dir(adapter_dir)
        self.adapter_dir = adapter
        self.labels = read_label_map(adapter)
        self.training_config = json.loads(
            (adapter / TRAINING_CONFIG_FILE).read_text(encoding="utf-8")
        )
        self.version = version or self.training_config.get("version") or adapter.name
        self.max_length = int(self.training_config.get("trainer", {}).get("max_length", 64))
        self.batch_size = batch_size
        self.device = resolve_device(device)
        base = _base_model_from_ref(self.training_config.get("base_model", {}), base_model_path)
        self.tokenizer, self.model = _load_for_inference(base, adapter, self.labels)
        self.model.to(self.device)
        self.model.eval()

    @classmethod
    def from_registry(cls, registry: Any, version: str | None = None, **kwargs: Any) -> Predictor:
        """Load a registered version (default: the stable one), downloading it if needed."""
        name = version or registry.pointers().stable
        if not name:
            from training.errors import RegistryPointerError

            raise RegistryPointerError("the registry has no stable version to load")
        return cls(registry.download(name), version=name, **kwargs)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Intent and confidence for each text, in order."""
        import torch

        out: list[Prediction] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start : start + self.batch_size])
                batch = self.tokenizer(
                    chunk,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                batch = {k: v.to(self.device) for k, v in batch.items()}
                probs = self.model(**batch).logits.float().softmax(dim=-1)
                conf, idx = probs.max(dim=-1)
                out += [
                    Prediction(self.labels[i], round(float(c), 6))
                    for i, c in zip(idx.tolist(), conf.tolist(), strict=True)
                ]
        return out

    def predict_one(self, text: str) -> Prediction:
        return self.predict([text])[0]


def _load_for_inference(base_model: Path, adapter: Path, labels: Sequence[str]) -> tuple[Any, Any]:
    from peft import PeftModel

    with _quiet_hf():
        tokenizer, base = _load_base_classifier(base_model, labels)
        _check_adapter_weights(adapter)
        try:
            model = PeftModel.from_pretrained(base, str(adapter))
        except Exception as exc:  # safetensors, shape and key errors all mean "corrupt"
            raise AdapterError(f"cannot load adapter {adapter}: {exc}") from exc
    return tokenizer, model


__all__ = ["Prediction", "Predictor"]
