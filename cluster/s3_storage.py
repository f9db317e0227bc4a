"""A run folder in S3 (or any S3-compatible store such as MinIO): the `Storage` protocol
(cluster/storage_protocol.py) over boto3, plus the pyarrow filesystem Ray Train writes
checkpoints through.

Credentials come only from the standard AWS chain (environment, profile, instance role):
neither this module nor the job spec ever holds them, and nothing here logs them. Retries
are botocore's (`standard` or `adaptive` mode) and the AWS SDK's standard retry strategy for
pyarrow; there is no retry loop of our own.

A folder written with `put_dir` is complete once its manifest `.distill-manifest.json`
(written last, listing every file and its size) is present: S3 has no atomic rename, so the
manifest is the commit point, and readers check it (`dir_complete`). Listings leave the
manifests out: they are bookkeeping, not files anyone put there.

The run folder's lease (`.lease.json`) is created with a conditional PUT
(`If-None-Match: *`: of two writers exactly one succeeds); renewing, taking over and
removing it are conditional on the ETag just read (`If-Match`), so two writers never both
take over one stale lease. AWS S3, MinIO and moto honour both conditions.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pyarrow.fs
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from distill.cluster.storage_protocol import (
    LEASE_FILE,
    Lease,
    LeaseHeld,
    StorageError,
    StorageNotFound,
    check_fenced,
    may_take_over,
    replaced,
)
from distill.core.spec import url_problem

MANIFEST = ".distill-manifest.json"
PROBE_KEY = ".distill-write-probe"
# DNS-compatible bucket names (what S3 and MinIO accept for new buckets).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# A conditional request that lost to another writer (or whose object went meanwhile).
_LOST_RACE = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404")
_LEASE_ATTEMPTS = 5
_PROBE_CONNECT_TIMEOUT_S = 3
_PROBE_READ_TIMEOUT_S = 5


@dataclass(frozen=True)
class S3Options:
    """Connection settings (never credentials). Mirrors `jobs.spec.S3Spec`."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"  # auto | path | virtual
    retry_mode: str = "standard"  # standard | adaptive
    max_attempts: int = 10

    @classmethod
    def from_spec(cls, spec) -> S3Options:
        if spec is None:
            return cls()
        if isinstance(spec, cls):
            return spec
        fields = ("endpoint_url", "region", "addressing_style", "retry_mode", "max_attempts")
        return cls(**{f: getattr(spec, f) for f in fields})

    def check_environment(self) -> None:
        """An endpoint from the environment is checked like `output.s3.endpoint_url`, so a
        malformed one is a StorageError naming the variable, not botocore's ValueError."""
        if self.endpoint_url:
            return
        for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            value = os.environ.get(var)
            problem = url_problem(value) if value else None
            if problem:
                raise StorageError(f"{var}: {problem}")

    def resolved_endpoint(self) -> str | None:
        # boto3 reads these by itself; pyarrow may not, so both get the same explicit value.
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix"); StorageError if malformed."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not uri.startswith("s3://"):
        raise StorageError(f"{uri!r} is not an s3://bucket/prefix URI")
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket name (expected s3://bucket/prefix)")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise StorageError(
            f"{uri!r}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')"
        )
    if parsed.query or parsed.fragment or "//" in parsed.path:
        raise StorageError(f"{uri!r}: unexpected '?', '#' or '//' in the prefix")
    return bucket, prefix


def _client(options: S3Options, *, probe: bool = False):
    retries = {"mode": options.retry_mode, "max_attempts": 2 if probe else options.max_attempts}
    config = Config(
        retries=retries,
        s3={"addressing_style": options.addressing_style},
        connect_timeout=_PROBE_CONNECT_TIMEOUT_S if probe else 10,
        read_timeout=_PROBE_READ_TIMEOUT_S if probe else 60,
    )
    kwargs = {"config": config}
    if options.endpoint_url:
        kwargs["endpoint_url"] = options.endpoint_url
    if options.region:
        kwargs["region_name"] = options.region
    return boto3.session.Session().client("s3", **kwargs)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reading(method):
    """A read whose failure (other than "not found") is a one-line StorageError saying why,
    instead of botocore's exception."""

    @functools.wraps(method)
    def read(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(self._explain(exc, reading=True)) from None

    return read


class S3Storage:
    """A run folder at `s3://bucket/prefix`."""

    def __init__(self, uri: str, options: S3Options | None = None) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.options = options or S3Options()
        self.options.check_environment()
        self._s3 = None

    # -- addressing ---------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def name(self) -> str:
        return self.prefix.rsplit("/", 1)[-1]

    def child(self, relpath: str) -> S3Storage:
        return S3Storage(f"{self.uri}/{relpath.strip('/')}", self.options)

    def key(self, relpath: str) -> str:
        return "/".join(p for p in (self.prefix, relpath.strip("/")) if p)

    @property
    def client(self):
        if self._s3 is None:
            self._s3 = _client(self.options)
        return self._s3

    # -- Ray ----------------------------------------------------------------------------
    def pyarrow_filesystem(self) -> pyarrow.fs.S3FileSystem:
        """The filesystem Ray Train uploads checkpoints through (picklable, no credentials
        inside: every process resolves them from its own AWS chain)."""
        o = self.options
        kwargs = {
            "retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=o.max_attempts),
            "connect_timeout": 10,
            "request_timeout": 60,
            "force_virtual_addressing": o.addressing_style == "virtual",
        }
        endpoint = o.resolved_endpoint()
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        if o.region:
            kwargs["region"] = o.region
        return pyarrow.fs.S3FileSystem(**kwargs)

    def ray_storage(self) -> tuple[str, pyarrow.fs.S3FileSystem]:
        """(storage_path, storage_filesystem) for `ray.train.RunConfig`."""
        return f"{self.bucket}/{self.prefix}".rstrip("/"), self.pyarrow_filesystem()

    # -- files --------------------------------------------------------------------------
    @_reading
    def exists(self, relpath: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(relpath))
            return True
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
        listing = self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=self.key(relpath) + "/", MaxKeys=1
        )
        return listing.get("KeyCount", 0) > 0

    @_reading
    def get(self, relpath: str) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(relpath))["Body"]
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey"):
                raise StorageNotFound(f"{self.uri}/{relpath}: no such file") from None
            raise
        return body.read()

    def _fenced(self, relpath: str) -> None:
        """Before any write: `LeaseLost` if `relpath` lies in a folder this process writes
        under a lease it no longer holds (storage_protocol.check_fenced)."""
        check_fenced(f"{self.uri}/{relpath}".rstrip("/"))

    def put(self, relpath: str, data: bytes) -> None:
        # One PUT: the object appears whole or not at all.
        self._fenced(relpath)
        self.client.put_object(Bucket=self.bucket, Key=self.key(relpath), Body=data)

    def read_text(self, relpath: str) -> str:
        return self.get(relpath).decode()

    def write_text(self, relpath: str, text: str) -> None:
        self.put(relpath, text.encode())

    def append_text(self, relpath: str, text: str) -> None:
        # S3 has no append: read and rewrite (the files appended to stay small).
        try:
            old = self.get(relpath)
        except StorageNotFound:
            old = b""
        self.put(relpath, old + text.encode())

    @_reading
    def list(self, relpath: str = "") -> list[str]:
        """Names of the immediate children (files and folders) of `relpath`."""
        prefix = self.key(relpath)
        prefix = f"{prefix}/" if prefix else ""
        names: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        ):
            names.update(
                p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])
            )
            names.update(o["Key"][len(prefix) :] for o in page.get("Contents", []))
        return sorted(n for n in names if n and n != MANIFEST)

    @_reading
    def list_files(self, relpath: str = "") -> dict[str, int]:
        """Every file under `relpath`, recursively, as {path relative to relpath: size}
        (without `put_dir` manifests)."""
        prefix = self.key(relpath)
        prefix = f"{prefix}/" if prefix else ""
        files = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :]
                if rel and not rel.endswith("/") and rel.rsplit("/", 1)[-1] != MANIFEST:
                    files[rel] = obj["Size"]
        return files

    def delete(self, relpath: str) -> None:
        """Delete a file or a whole folder (with any `folder/` marker objects in it)."""
        self._fenced(relpath)
        prefix = self.key(relpath)
        keys = [prefix] + [
            obj["Key"]
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{prefix}/"
            )
            for obj in page.get("Contents", [])
        ]
        for start in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True},
            )

    # -- folders ------------------------------------------------------------------------
    def put_dir(self, local_dir: str | Path, relpath: str) -> None:
        """Upload a folder; its manifest goes last, so readers never take a half-upload
        (or a half-replaced folder) for a complete one."""
        self._fenced(relpath)
        local_dir = Path(local_dir)
        files = {
            p.relative_to(local_dir).as_posix(): p.stat().st_size
            for p in sorted(local_dir.rglob("*"))
            if p.is_file()
        }
        manifest_key = self.key(f"{relpath}/{MANIFEST}")
        self.client.delete_object(Bucket=self.bucket, Key=manifest_key)
        stale = set(self.list_files(relpath)) - set(files)
        for rel in files:
            self.client.upload_file(str(local_dir / rel), self.bucket, self.key(f"{relpath}/{rel}"))
        for rel in sorted(stale):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(f"{relpath}/{rel}"))
        self.client.put_object(
            Bucket=self.bucket, Key=manifest_key, Body=json.dumps({"files": files}).encode()
        )

    def dir_complete(self, relpath: str) -> bool:
        """The folder's manifest exists and every file it lists is there with its size."""
        try:
            manifest = json.loads(self.read_text(f"{relpath}/{MANIFEST}"))
        except (StorageNotFound, ValueError):
            return False
        present = self.list_files(relpath)
        return all(present.get(rel) == size for rel, size in manifest["files"].items())

    @_reading
    def get_dir(self, relpath: str, local_dir: str | Path) -> Path:
        """Download a folder (without its manifest) into `local_dir`."""
        local_dir = Path(local_dir)
        files = self.list_files(relpath)
        if not files:
            raise StorageNotFound(f"{self.uri}/{relpath}: no such folder")
        local_dir.mkdir(parents=True, exist_ok=True)
        for rel in files:
            target = local_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, self.key(f"{relpath}/{rel}"), str(target))
        return local_dir

    # -- lease --------------------------------------------------------------------------
    def acquire_lease(self, lease: Lease, *, force: bool = False) -> Lease | None:
        key = self.key(LEASE_FILE)
        first = replace(lease, generation=1).to_json().encode()
        for _ in range(_LEASE_ATTEMPTS):
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=first, IfNoneMatch="*")
                return None
            except ClientError as exc:
                if _error_code(exc) not in _LOST_RACE:
                    raise
            held, age, etag = self._lease_object()
            if etag is None:
                continue  # removed meanwhile: create it again
            if not may_take_over(held, lease, force=force, age_s=age):
                raise LeaseHeld(self.uri, held)
            written = held.successor(lease) if held is not None else lease
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=written.to_json().encode(), IfMatch=etag
                )
            except ClientError as exc:
                if _error_code(exc) not in _LOST_RACE:
                    raise
                continue  # another writer replaced it first: look again
            return replaced(held, lease)
        raise StorageError(f"{self.uri}: the lease changed hands while taking it; try again")

    def release_lease(self, lease: Lease) -> None:
        held, _, etag = self._lease_object()
        if held is None or held.token != lease.token or held.released:
            return
        body = replace(held, released=True).to_json().encode()
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key(LEASE_FILE), Body=body, IfMatch=etag
            )
        except ClientError as exc:
            if _error_code(exc) not in _LOST_RACE:  # lost: a writer took over, theirs stays
                raise

    def read_lease(self) -> tuple[Lease | None, float | None]:
        """The lease and its age: the response's `Date` minus the object's `Last-Modified`,
        both S3's clock (whole seconds), so no host's clock enters the expiry."""
        held, age, _ = self._lease_object()
        return held, age

    def _lease_object(self) -> tuple[Lease | None, float | None, str | None]:
        """(the lease, its age on S3's clock, its ETag); all None when there is none."""
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key(LEASE_FILE))
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey"):
                return None, None, None
            raise
        body = obj["Body"].read()
        date = obj["ResponseMetadata"]["HTTPHeaders"].get("date")
        age = None
        if date:
            age = max(0.0, (parsedate_to_datetime(date) - obj["LastModified"]).total_seconds())
        return Lease.from_json(body), age, obj["ETag"]

    # -- preflight ----------------------------------------------------------------------
    def probe(self) -> None:
        """One cheap check that the run can write here: head-bucket, then put and delete a
        small object, with short timeouts. Raises StorageError with a one-line reason."""
        s3 = _client(self.options, probe=True)
        key = self.key(PROBE_KEY)
        try:
            try:
                s3.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                # A bare 403 (HEAD has no error body) means wrong keys or no permission:
                # the write probe's error says which.
                if _error_code(exc) not in ("403", "AccessDenied"):
                    raise
            s3.put_object(Bucket=self.bucket, Key=key, Body=b"distill write probe\n")
            s3.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise StorageError(self._explain(exc)) from None

    def check_readable(self) -> None:
        """Head-bucket with short timeouts, so readers (`runs list`, `export`, `report`) fail
        in seconds with one line on a missing bucket, bad keys or an unreachable endpoint."""
        try:
            _client(self.options, probe=True).head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) not in ("403", "AccessDenied"):  # reading may still be allowed
                raise StorageError(self._explain(exc)) from None
        except Exception as exc:
            raise StorageError(self._explain(exc)) from None

    def _explain(self, exc: Exception, *, reading: bool = False) -> str:
        where = self.options.resolved_endpoint() or "AWS S3"
        if isinstance(exc, NoCredentialsError):
            return (
                "no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or use an instance role)"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
            return f"cannot reach the S3 endpoint {where} ({type(exc).__name__})"
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            if code in ("404", "NoSuchBucket"):
                return f"bucket {self.bucket!r} does not exist at {where}"
            if code in _BAD_CREDENTIALS:
                return f"the AWS credentials were rejected by {where} ({code})"
            if code in ("403", "AccessDenied", "AllAccessDisabled"):
                needed = (
                    "read there (s3:ListBucket and s3:GetObject are needed)"
                    if reading
                    else "write there (s3:PutObject and s3:DeleteObject are needed)"
                )
                return f"access denied to s3://{self.bucket}/{self.prefix}: the credentials may not {needed}"
            return f"s3://{self.bucket}: {code or 'request failed'}"
        if isinstance(exc, BotoCoreError):
            return f"s3://{self.bucket}: {type(exc).__name__}"
        raise exc


_BAD_CREDENTIALS = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
)
