"""Safetensors checkpoints on disk: resolving, validating, streaming patched copies. Torch-free.

Nothing here runs a model or loads a whole checkpoint: tensors are read one at a time from their
byte ranges, so peak memory is about one tensor whatever the model size.

- :mod:`~tnedit.checkpoint.files`: opening sources safely, exact reads, exclusive creation.
- :mod:`~tnedit.checkpoint.safetensors`: headers (checked as safetensors checks them), single tensors.
- :mod:`~tnedit.checkpoint.streaming`: copies with patched tensors, plain copies (reflinks), SHA-256 of files.
- :mod:`~tnedit.checkpoint.targets`: which tensor (and which slice of a fused experts tensor) holds each projection.
- :mod:`~tnedit.checkpoint.digests`: the digest cache outside the checkpoint (the racy-clean rule).
- :mod:`~tnedit.checkpoint.directory`: :class:`Checkpoint`, :func:`open_checkpoint`, source resolution.
- :mod:`~tnedit.checkpoint.verify`: whether an edited checkpoint's weights are the recorded ones.
"""

from __future__ import annotations

from tnedit.checkpoint.digests import (
    CACHE_ENV,
    TIMESTAMP_GRANULARITY_NS,
    DigestCache,
    cache_home,
    cached_sha256,
    cached_sha256_files,
    hashing_clock,
    open_digest_cache,
)
from tnedit.checkpoint.directory import (
    CONTENT_SAMPLE,
    FOREIGN_WEIGHT_SUFFIXES,
    INDEX_NAME,
    QUANT_SUFFIXES,
    SKIP_DIRS,
    Checkpoint,
    ResolvedSource,
    is_hub_id,
    open_checkpoint,
    read_config,
    require_directory,
    resolve_source,
)
from tnedit.checkpoint.files import FileIdentity, create_new, file_identity, open_source, writing
from tnedit.checkpoint.safetensors import (
    ELEMENT_SIZE,
    FLOAT_DTYPES,
    MAX_HEADER_BYTES,
    SafetensorsHeader,
    TensorInfo,
    read_header,
    read_tensor,
    write_safetensors,
)
from tnedit.checkpoint.streaming import (
    CHUNK,
    HASH_BUFFER,
    CopyResult,
    TensorPatch,
    available_cores,
    copy_bytes,
    copy_plain,
    copy_with_patches,
    hub_blob_sha256,
    sha256_file,
    sha256_files,
)
from tnedit.checkpoint.targets import Projection, ProjectionMap, Target, view_shape
from tnedit.checkpoint.verify import missing_weights, weights_problem

__all__ = [
    "CACHE_ENV",
    "CHUNK",
    "CONTENT_SAMPLE",
    "ELEMENT_SIZE",
    "FLOAT_DTYPES",
    "FOREIGN_WEIGHT_SUFFIXES",
    "HASH_BUFFER",
    "INDEX_NAME",
    "MAX_HEADER_BYTES",
    "QUANT_SUFFIXES",
    "SKIP_DIRS",
    "TIMESTAMP_GRANULARITY_NS",
    "Target",
    "Checkpoint",
    "CopyResult",
    "DigestCache",
    "FileIdentity",
    "Projection",
    "ProjectionMap",
    "ResolvedSource",
    "SafetensorsHeader",
    "TensorInfo",
    "TensorPatch",
    "available_cores",
    "cache_home",
    "cached_sha256",
    "cached_sha256_files",
    "copy_bytes",
    "copy_plain",
    "copy_with_patches",
    "create_new",
    "file_identity",
    "hashing_clock",
    "hub_blob_sha256",
    "is_hub_id",
    "missing_weights",
    "open_checkpoint",
    "open_digest_cache",
    "open_source",
    "read_config",
    "read_header",
    "read_tensor",
    "require_directory",
    "resolve_source",
    "sha256_file",
    "sha256_files",
    "view_shape",
    "weights_problem",
    "write_safetensors",
    "writing",
]
