"""Emptying and deleting a test bucket on any S3 server, S3Proxy's filesystem included."""

from __future__ import annotations

from typing import Any


def delete_bucket(client: Any, bucket: str) -> None:
    """Delete every object and unfinished upload of ``bucket``, then the bucket.

    Keys go deepest first: S3Proxy's filesystem backend stores a folder marker
    (``dir/``, which Hadoop s3a writes) as a directory and refuses to delete it
    while it still holds objects; real S3 accepts any order.
    """
    keys = sorted(
        (
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])
        ),
        reverse=True,
    )
    for start in range(0, len(keys), 1000):
        chunk = [{"Key": key} for key in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    for upload in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)
