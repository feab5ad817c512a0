"""The encoder backends on the realistic workload's texts: speed and repeat agreement.

    .venv/bin/python tests/benchmarks/bench_encoders.py [--sessions 2000] [--threads 1]

Encodes every distinct user text of the realistic workload (``realistic_traffic.py``)
with each backend of ``jobs.embedding.Embedder`` ("torch", the model as saved, fp32, is
the baseline) and prints texts/s, start-up time, the smallest cosine between a text's
two vectors, and how often the repeated-question rule (contract section 3: the same
normalized text or cosine >= ``repeat_similarity`` with one of the last
``repeat_lookback`` questions of the session) decides the same with either encoder:
per comparison of two readable texts, and per user message.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from realistic_traffic import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from features import normalize_text
    from jobs.embedding import Embedder
    from jobs.settings import FeatureJobSettings

    settings = FeatureJobSettings()
    lookback, threshold = settings.repeat_lookback, settings.repeat_similarity
    stream = generate(args.sessions, seed=args.seed)
    sessions: dict[str, list[str]] = {}
    for event in stream.events:
        if event["event_type"] == "user_message":
            sessions.setdefault(event["session_id"], []).append(event["text"])
    texts = sorted({text for session in sessions.values() for text in session})
    messages = sum(len(session) for session in sessions.values())
    print(
        f"{messages:,} user messages in {len(sessions):,} sessions, {len(texts):,} distinct texts"
    )

    vectors: dict[str, np.ndarray] = {}
    rates: dict[str, float] = {}
    for backend in ("torch", "onnx-int8"):
        started = time.perf_counter()
        embedder = Embedder(batch_size=args.batch_size, threads=args.threads, backend=backend)
        embedder.encode(texts[:32])
        ready = time.perf_counter() - started
        started = time.perf_counter()
        vectors[backend] = embedder.encode(texts)
        rates[backend] = len(texts) / (time.perf_counter() - started)
        print(f"{backend:>9}: {rates[backend]:7.1f} texts/s ({args.threads} thread(s)), "
              f"ready in {ready:.1f} s", flush=True)  # fmt: skip
    print(f"speed-up onnx-int8 / torch: {rates['onnx-int8'] / rates['torch']:.2f}x")

    index = {text: i for i, text in enumerate(texts)}
    fp32, int8 = vectors["torch"], vectors["onnx-int8"]
    readable = ~np.isnan(fp32[:, 0])
    assert (readable == ~np.isnan(int8[:, 0])).all(), "the backends disagree on readability"
    cosines = np.sum(fp32[readable] * int8[readable], axis=1)
    print(
        f"same text, two encoders: cosine min {cosines.min():.4f}, median {np.median(cosines):.4f}"
    )

    pairs = pairs_same = decided = decided_same = 0
    for session in sessions.values():
        normalized = [normalize_text(text) for text in session]
        for at in range(len(session)):
            verdicts = []
            for vs in (fp32, int8):
                repeated = False
                for before in range(max(0, at - lookback), at):
                    i, j = index[session[at]], index[session[before]]
                    if normalized[at] == normalized[before]:
                        repeated = True
                    elif readable[i] and readable[j] and float(vs[i] @ vs[j]) >= threshold:
                        repeated = True
                verdicts.append(repeated)
            decided += 1
            decided_same += verdicts[0] == verdicts[1]
            for before in range(max(0, at - lookback), at):
                i, j = index[session[at]], index[session[before]]
                if readable[i] and readable[j] and normalized[at] != normalized[before]:
                    pairs += 1
                    pairs_same += (fp32[i] @ fp32[j] >= threshold) == (
                        int8[i] @ int8[j] >= threshold
                    )
    print(f"embedding comparisons decided alike: {pairs_same:,} of {pairs:,} "
          f"({pairs_same / pairs:.4%}); repeat decisions per message alike: "
          f"{decided_same:,} of {decided:,} ({decided_same / decided:.4%})")  # fmt: skip


if __name__ == "__main__":
    main()
