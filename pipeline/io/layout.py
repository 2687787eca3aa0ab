"""Where every file of an OUTPUT lives, and the closed sets of values its records hold.

One place for the layout (schemas/ documents the contents):

    OUTPUT/
      dataset.json            DatasetMeta: vocabulary, label format, config, model (written once)
      masks/NAME.tar          KEY.label.png + KEY.conf.png for every ok sample of input shard NAME
      manifest/NAME.parquet   one ManifestRow per input sample (schemas/manifest-v1.json)
      _done/NAME.json         DoneRecord, written last: the shard is complete exactly when it exists
      _stats.json             totals of the last run
      _lock.json              LockRecord of the run that holds OUTPUT
      eval.json               `pseudolabel evaluate --save`
      _tmp/                   local temporaries before their rename into place

The enums are `StrEnum`s: they compare equal to, and serialise as, the plain strings the files
have always held, so records written before them read back unchanged.
"""
from __future__ import annotations

import enum

DATASET_JSON = "dataset.json"
STATS_JSON = "_stats.json"
LOCK_JSON = "_lock.json"
EVAL_JSON = "eval.json"
MASKS_DIR = "masks"
MANIFEST_DIR = "manifest"
DONE_DIR = "_done"
TMP_DIR = "_tmp"

MASK_SUFFIX = ".tar"
MANIFEST_SUFFIX = ".parquet"
DONE_SUFFIX = ".json"

# Per-shard folders, in the order `--overwrite` clears them: completion records first, so an
# interrupted clear never leaves an old shard counted as complete.
SHARD_DIRS = (DONE_DIR, MASKS_DIR, MANIFEST_DIR)
# Files of the whole OUTPUT that `--overwrite` removes (the lock is the run's own).
RUN_FILES = (DATASET_JSON, STATS_JSON)


def mask_shard_path(name: str) -> str:
    return f"{MASKS_DIR}/{name}{MASK_SUFFIX}"


def manifest_path(name: str) -> str:
    return f"{MANIFEST_DIR}/{name}{MANIFEST_SUFFIX}"


def done_path(name: str) -> str:
    return f"{DONE_DIR}/{name}{DONE_SUFFIX}"


def label_member(key: str) -> str:
    return f"{key}.label.png"


def conf_member(key: str) -> str:
    return f"{key}.conf.png"


def shard_name(file_name: str, suffix: str) -> str:
    """NAME of `NAME<suffix>` (a file name as listed in one of the per-shard folders)."""
    return file_name[: -len(suffix)] if file_name.endswith(suffix) else file_name


class RowStatus(enum.StrEnum):
    """`status` of a manifest row."""

    OK = "ok"
    ERROR = "error"


class ShardStatus(enum.StrEnum):
    """`status` of a shard's result; only DONE and FAILED are ever written to `_done/NAME.json`."""

    DONE = "done"  # every sample has a row
    FAILED = "failed"  # tar broke part way: the rows read so far are kept, the shard is complete
    UNREADABLE = "unreadable"  # nothing could be read: no outputs, not complete, retried next run
    CRASHED = "crashed"  # labeling code raised, or its worker was lost more than ray.max_shard_retries times

    @property
    def complete(self) -> bool:
        return self in (ShardStatus.DONE, ShardStatus.FAILED)


Status = ShardStatus  # the shard status is "the" status of the run's records


class ErrorKind(enum.StrEnum):
    """Why a sample has an error row: the prefix of the manifest `error` column (`KIND: message`)."""

    CORRUPT = "corrupt"  # not an image, or its pixels do not decode
    TOO_LARGE = "too_large"  # more pixels than io.max_image_pixels
    TOO_SMALL = "too_small"  # a side shorter than one patch
    UNSUPPORTED_MODE = "unsupported_mode"  # Pillow mode without a meaning-preserving RGB conversion
    UNSUPPORTED_FORMAT = "unsupported_format"  # a file format that is not a raster image (EPS, PDF, ...), never decoded
    NO_IMAGE = "no_image"  # no member with an image extension
    TRUNCATED_TAR = "truncated_tar"  # the shard ended inside this sample
    DUPLICATE_KEY = "duplicate_key"  # key already seen earlier in the shard
    UNSAFE_KEY = "unsafe_key"  # "..", absolute, control characters or too long for a file system (io.reader.key_problem)
    INFERENCE = "inference"  # the engine failed on this image
