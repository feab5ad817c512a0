"""Flywheel training: from flagged sessions to a promoted LoRA adapter.

The recipe, module by module (see training/README.md):

* ``synthetic`` / ``traffic`` — deterministic intent data with a weak slice; simulated traffic
* ``data`` / ``pool`` — flagged messages -> labeled pool samples (Parquet on S3)
* ``labelstudio`` — the human review queue
* ``classifier`` — seed -> data -> model -> train -> save; the ``Predictor``
* ``causal`` — the same for a causal LM on edited responses
* ``evaluate`` — held-out set + failure slice, the promotion gate
* ``registry`` — versions, stable/canary pointers, ``ModelRouter``
* ``rollback`` / ``triggers`` / ``loop`` — automatic rollback, retrain triggers, the loop

Importing this package imports nothing heavy; torch loads when a model does.
"""
