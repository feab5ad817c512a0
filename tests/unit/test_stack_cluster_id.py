"""The local Kafka's cluster id: the storage tool must take it as a value, never an option."""

from __future__ import annotations

import base64

from deploy.stack import _kafka_cluster_id


def test_cluster_ids_are_kafka_uuids_that_never_start_with_a_dash() -> None:
    ids = {_kafka_cluster_id() for _ in range(5_000)}  # about 78 would start with "-"
    assert len(ids) == 5_000
    assert not any(cluster_id.startswith("-") for cluster_id in ids)
    for cluster_id in list(ids)[:100]:
        assert len(cluster_id) == 22
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
