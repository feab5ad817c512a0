"""Training and inference speed of the LoRA intent classifier on this machine.

Run manually (not collected by pytest)::

    .venv/bin/python tests/benchmarks/bench_training.py [--samples 1000] [--epochs 1]

Trains a fresh LoRA adapter on ``--samples`` synthetic examples (all-MiniLM-L6-v2 base,
offline) once per batch size, then times batched prediction with the Predictor. Prints
samples/s, wall time and ratios. CPU here; CUDA when present. The machine's load
average is printed too: other processes on a 2-core box change the figures a lot.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-sizes", default="16,32", help="comma-separated")
    parser.add_argument("--predict-texts", type=int, default=1000)
    args = parser.parse_args()

    import torch

    from training.classifier import Predictor, resolve_device, train_intent_adapter
    from training.data import base_examples
    from training.settings import TrainerConfig
    from training.synthetic import INTENTS, base_dataset, heldout_dataset

    per_intent = -(-args.samples // len(INTENTS))
    examples = base_examples(base_dataset(0, per_intent=per_intent))[: args.samples]
    device = resolve_device("auto")
    print(
        f"device={device} torch_threads={torch.get_num_threads()} cpus={os.cpu_count()} "
        f"load_avg={os.getloadavg()[0]:.2f}"
    )
    print(f"training on {len(examples)} samples x {args.epochs} epoch(s), LoRA r=8 on query,value")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapter = None
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            config = TrainerConfig(epochs=args.epochs, batch_size=batch_size)
            started = time.perf_counter()
            result = train_intent_adapter(
                examples, Path(tmp) / f"bs{batch_size}", labels=INTENTS, config=config
            )
            total = time.perf_counter() - started
            stats = result.stats
            results[batch_size] = stats.samples_per_s
            adapter = result.adapter_dir
            print(
                f"  batch {batch_size:>3}: train loop {stats.wall_s:7.2f} s, "
                f"{stats.samples_per_s:7.1f} samples/s; wall incl. load+save {total:7.2f} s; "
                f"final loss {stats.epoch_losses[-1]:.3f}"
            )
        sizes = sorted(results)
        if len(sizes) > 1:
            print(
                f"  ratio samples/s batch {sizes[-1]} / batch {sizes[0]}: "
                f"{results[sizes[-1]] / results[sizes[0]]:.2f}x"
            )
        assert adapter is not None
        predictor = Predictor(adapter)
        texts = [r.text for r in heldout_dataset(0)]
        texts = (texts * (args.predict_texts // len(texts) + 1))[: args.predict_texts]
        predictor.predict(texts[:64])  # warm-up
        started = time.perf_counter()
        predictor.predict(texts)
        predict_s = time.perf_counter() - started
        rate = len(texts) / predict_s
        print(
            f"predict: {len(texts)} texts in {predict_s:.2f} s, {rate:.1f} texts/s "
            f"(batch {predictor.batch_size})"
        )
        best = max(results.values())
        print(f"ratio inference / training throughput: {rate / best:.1f}x")
        print(
            f"1,000 training samples per epoch: about {1000 / best:.1f} s at the best batch size"
        )


if __name__ == "__main__":
    main()
