"""Training and inference speed of the LoRA intent classifier on this machine.

Run manually (not collected by pytest)::

    .venv/bin/python tests/benchmarks/bench_training.py [--samples 1000] [--epochs 1]
        [--batch-sizes 16,32] [--threads 1,2]

Trains a fresh LoRA adapter on ``--samples`` synthetic examples (all-MiniLM-L6-v2 base,
offline) for every (torch threads, batch size) pair, then times batched prediction with
the Predictor. Prints samples/s, wall time and ratios. CPU here; CUDA when present. The
load average is printed too: on a shared 2-core box other processes change the figures
a lot, and oversubscribed torch threads make it worse (compare --threads 1,2).
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
    parser.add_argument("--threads", default="1,2", help="torch intra-op threads, comma-separated")
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
    print(f"device={device} cpus={os.cpu_count()} torch={torch.__version__}")
    print(f"training on {len(examples)} samples x {args.epochs} epoch(s), LoRA r=8 on query,value")
    results: dict[tuple[int, int], float] = {}
    texts = [r.text for r in heldout_dataset(0)]
    texts = (texts * (args.predict_texts // len(texts) + 1))[: args.predict_texts]
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (int(t) for t in args.threads.split(",")):
            adapter = None
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                config = TrainerConfig(
                    epochs=args.epochs, batch_size=batch_size, torch_threads=threads
                )
                load = os.getloadavg()[0]
                started = time.perf_counter()
                result = train_intent_adapter(
                    examples, Path(tmp) / f"t{threads}-b{batch_size}", labels=INTENTS, config=config
                )
                total = time.perf_counter() - started
                stats = result.stats
                results[(threads, batch_size)] = stats.samples_per_s
                adapter = result.adapter_dir
                print(
                    f"  threads {threads} batch {batch_size:>3}: train loop {stats.wall_s:7.2f} s, "
                    f"{stats.samples_per_s:7.1f} samples/s; wall incl. load+save {total:7.2f} s "
                    f"(load avg {load:.2f})"
                )
            assert adapter is not None
            predictor = Predictor(adapter, torch_threads=threads)
            predictor.predict(texts[:64])  # warm-up
            started = time.perf_counter()
            predictor.predict(texts)
            predict_s = time.perf_counter() - started
            print(
                f"  threads {threads} predict: {len(texts)} texts in {predict_s:.2f} s, "
                f"{len(texts) / predict_s:.1f} texts/s (batch {predictor.batch_size})"
            )
    best_key = max(results, key=lambda k: results[k])
    best = results[best_key]
    print(
        f"best: threads {best_key[0]}, batch {best_key[1]}: {best:.1f} samples/s; "
        f"1,000 training samples per epoch take about {1000 / best:.1f} s"
    )
    for key, rate in sorted(results.items()):
        print(f"  ratio best / (threads {key[0]}, batch {key[1]}): {best / rate:.2f}x")


if __name__ == "__main__":
    main()
