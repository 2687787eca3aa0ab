"""Label one input shard end to end with a given engine: read, decode, infer, encode, write, record.

The engine is passed in (a `pipeline.engine.protocol.LabelEngine`: `predict`, `num_classes`,
`patch_size`), so the stage runs the same inside a Ray actor and in a plain test process. Work overlaps in three lanes:
a reader thread walks the tar and hands images to a thread pool for decoding (bounded by
io.prefetch_batches), the calling thread runs inference one batch at a time, and PNG encoding of
batch k runs in the pool while batch k+1 is inferred; on CUDA one copy-waiter thread hands each
encoding to the pool only once its outputs are on the host (run/copy_waiter.py), so no pool thread
waits on the GPU. Rows and masks are written in input order.
"""
from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from pipeline.config import Config
from pipeline.errors import DeviceFatalError, ShardInferenceError, TransientReadError
from pipeline.engine.protocol import FullSizeEngine, LabelEngine, check_engine, engine_device
from pipeline.io.decode import DecodeLimits, configure_pillow, decode_formats, decode_image
from pipeline.io.masks import encode_masks, label_format, stored_size
from pipeline.io.reader import ReadReport, iter_samples
from pipeline.io.layout import ErrorKind, ShardStatus, manifest_path, mask_shard_path
from pipeline.io.records import DoneRecord, ManifestRow, SampleError, SampleResult, ShardResult
from pipeline.io.shards import ShardSpec
from pipeline.io.output_dir import OutputDir
from pipeline.run.copy_waiter import CopyWaiter
from pipeline.run.device_errors import is_fatal_device_error, is_out_of_memory, release_cached_memory
from pipeline.timestamps import utc_now_iso
from pipeline.run.shard_identity import input_identity, keys_digest
from pipeline.io.writers import MaskTarWriter, write_manifest

log = logging.getLogger(__name__)

DONE = ShardStatus.DONE
FAILED = ShardStatus.FAILED
UNREADABLE = ShardStatus.UNREADABLE
CRASHED = ShardStatus.CRASHED
INFERENCE = ErrorKind.INFERENCE  # error kind for samples the engine failed on


@dataclass
class ShardProgress:
    shard: str
    samples: int  # rows produced so far in this shard (ok + errors)
    ok: int
    errors: int


ProgressFn = Callable[[ShardProgress], None]

# A shard is not complete when the engine, not the data, failed: more than this share of the
# images it was given, or this many in a row (an engine that broke part way through a shard).
MAX_INFERENCE_FAILURE_SHARE = 0.5
MAX_INFERENCE_FAILURE_STREAK = 8
_OUT_OF_MEMORY = "out of memory"  # `_call_engine`'s verdict on a batch that did not fit the device
# Whole-image mode regroups a window of images by shape; the window also stops at this many decoded
# pixels (~300 MB of RGB), so 24 MP photos do not hold prefetch_batches x batch_size of them at once.
GROUP_WINDOW_PIXELS = 100_000_000


@dataclass
class EngineHealth:
    """Inference failures of one shard, seen in input order."""

    failed: int = 0  # images the engine failed on
    given: int = 0  # images that reached the engine (ok + failed)
    streak: int = 0  # consecutive failures up to the last image given
    worst: int = 0  # longest run of consecutive failures

    def saw(self, sample: SampleResult) -> None:
        if sample.ok:
            self.given, self.streak = self.given + 1, 0
        elif sample.error is not None and sample.error.kind == INFERENCE:
            self.given, self.failed, self.streak = self.given + 1, self.failed + 1, self.streak + 1
            self.worst = max(self.worst, self.streak)

    def check(self, result: ShardResult) -> None:
        if self.failed > MAX_INFERENCE_FAILURE_SHARE * self.given or self.worst >= MAX_INFERENCE_FAILURE_STREAK:
            raise ShardInferenceError(
                f"shard {result.shard}: the engine failed on {self.failed} of the {self.given} images it was "
                f"given ({self.worst} in a row): a broken engine, not bad images; the shard is not marked "
                "complete and is retried")


class _Unreadable(Exception):
    """Raised inside the writer block so that nothing of an unreadable shard is committed."""


def decode_threads(cfg: Config, device: Any) -> int:
    """`io.decode_threads`, or when 0: on CUDA the CPUs this actor holds (Ray's reservation, or
    outside Ray the host's cores per GPU) minus the inference and reader threads (decoding plus PNG
    encoding cost ~10 ms of CPU per 336x448 image, so ~1,000 images/s per GPU needs ~10 cores,
    pipeline/run/placement.py); 2 on a CPU device, whose cores inference already uses."""
    if cfg.io.decode_threads > 0:
        return cfg.io.decode_threads
    if getattr(device, "type", "cpu") != "cuda":
        return 2
    import torch

    from pipeline.run.placement import assigned_cpus, host_cpus_per_gpu, pool_threads

    return pool_threads(assigned_cpus() or host_cpus_per_gpu(torch.cuda.device_count()))


class ShardLabeler:
    def __init__(self, engine: LabelEngine, cfg: Config, storage: OutputDir, worker: str = "",
                 progress: Optional[ProgressFn] = None, fingerprint: Optional[str] = None):
        check_engine(engine)  # a wrong engine fails here, with what it lacks, not inside a shard
        self.engine = engine
        self.cfg = cfg
        # The content fingerprint the completion records carry: the one the worker computed from
        # what it loaded (pipeline.identity), else the engine's own.
        self.fingerprint = fingerprint or _engine_fingerprint(engine, cfg)
        self.storage = storage
        self.worker = worker
        self.progress = progress or (lambda p: None)
        self.fmt = label_format(engine, cfg)
        self.limits = DecodeLimits(cfg.io.max_image_pixels, min_side(engine, cfg), draft_to(engine, cfg),
                                   decode_formats(cfg.io.image_extensions))  # raster decoders only
        # Whole-image engines batch by the size they infer at; others take any batch.
        self._batch_key = engine.inference_size if getattr(engine, "batches_by_shape", False) else None  # type: ignore[attr-defined]
        self.pool = ThreadPoolExecutor(decode_threads(cfg, engine_device(engine)),
                                       thread_name_prefix="decode")
        # Encodings enter the pool only once their outputs are on the host (run/copy_waiter.py).
        self.copies = CopyWaiter(self.pool)
        # An engine that labels at the stored size itself (the Segmenter: post-processing on its
        # device at that size); others label at the image's size and the encoder shrinks the maps.
        self._capped = self.fmt.max_side > 0 and bool(getattr(engine, "labels_at_max_side", False))
        # Largest batch that fitted in device memory, per inference shape (set by out-of-memory).
        self.batch_limits: dict[Any, int] = {}
        configure_pillow(cfg.io.max_image_pixels)

    def close(self) -> None:
        self.copies.close()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def label(self, shard: ShardSpec) -> ShardResult:
        t0 = time.monotonic()
        result = ShardResult(shard.name, shard.url, DONE, started_at=utc_now_iso(), worker=self.worker,
                             class_pixels=[0] * self.fmt.num_classes)
        log.info("shard %s: start (%s)", shard.name, shard.url)
        result.input_size, result.input_etag = input_identity(shard.url, self.cfg.io.storage_options)
        report = ReadReport()
        samples = iter_samples(shard.url, self.cfg.io.image_extensions, report, self.cfg.io.storage_options,
                               max_member_bytes=self.cfg.io.max_member_bytes,
                               max_expansion=self.cfg.io.max_expansion_ratio)
        rows: list[ManifestRow] = []
        self.health = EngineHealth()
        try:
            with MaskTarWriter(self.storage, mask_shard_path(shard.name)) as tar:
                for done in self._labeled(self._decoded(samples)):
                    self._write(done, tar, rows, result)
                if report.unreadable:
                    raise _Unreadable()
                self.health.check(result)  # raises before anything of a shard a broken engine labeled is kept
        except _Unreadable:
            return self._finish_unreadable(result, report, t0)
        except (TransientReadError, ShardInferenceError) as exc:
            log.warning("shard %s: %s; nothing written, not complete", shard.name, exc)
            raise
        result.members, result.skipped_members = report.members, dict(report.skipped)
        result.keys_sha256 = keys_digest(r.key for r in rows)
        result.mask_bytes = tar.bytes  # sizes of the committed files: a listing then shows damage
        result.manifest_bytes = write_manifest(self.storage, manifest_path(shard.name), rows)
        if report.failure:
            result.status, result.failure = FAILED, report.failure
        self._finish(result, t0)
        return result

    # -- lanes -------------------------------------------------------------------------------

    def _decoded(self, samples: Iterator[SampleResult]) -> Iterator[SampleResult]:
        """Samples in order, decoded in the pool up to `window` ahead of the consumer."""
        window = max(1, self.cfg.io.prefetch_batches) * max(1, self.cfg.batch_size)
        lane: queue.Queue[Any] = queue.Queue(maxsize=window)
        stop = threading.Event()
        reader = threading.Thread(target=self._read_lane, args=(samples, lane, stop), daemon=True,
                                  name="shard-reader")
        reader.start()
        try:
            while True:
                item = lane.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item.result()
        finally:
            stop.set()
            reader.join()

    def _read_lane(self, samples: Iterator[SampleResult], lane: queue.Queue[Any], stop: threading.Event) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    lane.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for sample in samples:
                if not put(self.pool.submit(self._decode, sample)):
                    return
            put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which raises it
            put(exc)
        finally:
            samples.close()  # type: ignore[attr-defined]  # closes the input stream in this thread

    def _decode(self, sample: SampleResult) -> SampleResult:
        if sample.ok:
            try:
                decoded = decode_image(sample.data or b"", self.limits)
                sample.rgb, sample.source_mode = decoded.rgb, decoded.source_mode
                sample.height, sample.width = decoded.size  # the labels' size, also when drafted smaller
            except SampleError as err:
                sample.fail(err)
            sample.data = None
        return sample

    def _labeled(self, decoded: Iterator[SampleResult]) -> Iterator[list[tuple[SampleResult, Optional[Future]]]]:
        """Chunks of samples in input order; encoding of one chunk overlaps inference of the next,
        so a chunk is yielded one step late. A chunk holds batch_size images, or, when the engine
        batches by image shape (whole-image mode), up to io.prefetch_batches batches' worth, which
        `_infer` regroups by shape: a corpus of mixed photo sizes then fills its batches."""
        batch = max(1, self.cfg.batch_size)
        grouped = self._batch_key is not None
        window = batch * max(1, self.cfg.io.prefetch_batches) if grouped else batch
        previous: Optional[list[tuple[SampleResult, Optional[Future]]]] = None
        for chunk in _chunks(decoded, window, GROUP_WINDOW_PIXELS if grouped else 0):
            current = self._infer(chunk)
            if previous is not None:
                yield from _pieces(previous, batch)
            previous = current
        if previous is not None:
            yield from _pieces(previous, batch)

    def _infer(self, chunk: list[SampleResult]) -> list[tuple[SampleResult, Optional[Future]]]:
        ok = [s for s in chunk if s.ok]
        outputs: list[Any] = [None] * len(ok)
        for members in _batches(ok, max(1, self.cfg.batch_size), self._batch_key):
            batch = [ok[i] for i in members]
            for i, out in zip(members, self._predict([s.rgb for s in batch], [(s.height, s.width) for s in batch])):
                outputs[i] = out
        encodes: dict[int, Future] = {}
        for sample, out in zip(ok, outputs):
            if isinstance(out, SampleError):
                sample.fail(out)
            else:
                encodes[id(sample)] = self.copies.submit(self._encode, sample, out)
            sample.rgb = None
        return [(s, encodes.get(id(s))) for s in chunk]

    def _predict(self, images: list[np.ndarray], sizes: Optional[list[tuple[int, int]]] = None) -> Sequence[Any]:
        """Engine outputs, one per image, at `sizes` (H, W; default the images' own); an image the
        engine fails on becomes a SampleError. A batch that runs out of device memory is halved
        (outside the `except`, whose traceback holds the failed batch's tensors, and after emptying
        the allocator's cache) and the largest batch that fitted is kept per inference shape, so the
        next batches are cut before they fail. Another failing batch is retried image by image so
        one bad image does not fail its neighbours."""
        sizes = sizes or [img.shape[:2] for img in images]
        limit = min([self.batch_limits.get(self._shape_key(s), len(images)) for s in sizes] or [1])
        if len(images) > limit:
            return [out for i in range(0, len(images), limit)
                    for out in self._predict(images[i : i + limit], sizes[i : i + limit])]
        outs, failure = self._call_engine(images, sizes)
        if failure is None:
            return self._checked(outs, [self._label_size(s) for s in sizes])
        if failure is _OUT_OF_MEMORY:
            release_cached_memory()
            if len(images) == 1:
                return [SampleError(INFERENCE, f"out of device memory on one {sizes[0][0]}x{sizes[0][1]} image")]
            half = (len(images) + 1) // 2
            for size in sizes:
                key = self._shape_key(size)
                self.batch_limits[key] = min(self.batch_limits.get(key, half), half)
            log.warning("out of device memory on a batch of %d; batches of this shape now hold at most %d",
                        len(images), half)
            return self._predict(images, sizes)
        if len(images) == 1:
            return [failure]
        return [out for img, size in zip(images, sizes) for out in self._predict([img], [size])]

    def _call_engine(self, images: list[np.ndarray], sizes: list[tuple[int, int]]) -> tuple[Sequence[Any], Any]:
        """(outputs, None), or (None, what failed): `_OUT_OF_MEMORY` or a SampleError without its
        traceback, so that nothing of the failed call outlives this function. A fatal device error
        raises DeviceFatalError: no row, the worker must go."""
        try:
            if self._capped:  # the engine post-processes at the stored size itself (on its device)
                outs = self.engine.predict(images, return_probs=False, out_sizes=sizes,  # type: ignore[call-arg]
                                           max_side=self.fmt.max_side)
                return outs, None
            if any(img.shape[:2] != size for img, size in zip(images, sizes)):  # drafted: a FullSizeEngine
                return self.engine.predict(images, return_probs=False, out_sizes=sizes), None  # type: ignore[call-arg]
            # engines without `out_sizes` (the student, test doubles) are called as always
            return self.engine.predict(images, return_probs=False), None
        except Exception as exc:  # noqa: BLE001 - any engine failure on data is a sample error
            if is_fatal_device_error(exc):  # the device, not the data: no row, the worker must go
                raise DeviceFatalError(f"engine device failed: {type(exc).__name__}: {exc}") from exc
            if is_out_of_memory(exc):
                return None, _OUT_OF_MEMORY
            if isinstance(exc, SampleError):  # the engine says the image is at fault (e.g. too_small)
                return None, exc.with_traceback(None)
            if len(images) == 1:
                log.warning("engine failed on an image (%s x %s): %s", *images[0].shape[:2], exc)
            return None, SampleError(INFERENCE, f"{type(exc).__name__}: {exc}")

    def _label_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size the engine's output for an image of `size` has: the stored size
        (labels.max_side) where the engine caps its outputs, else the image's own."""
        return stored_size(*size, self.fmt.max_side) if self._capped else tuple(size)

    def _shape_key(self, size: tuple[int, int]) -> Any:
        """What device memory depends on: the inference size where the engine says it."""
        infer = getattr(self.engine, "inference_size", None)
        return infer(*size) if callable(infer) else tuple(size)

    @staticmethod
    def _checked(outs: Sequence[Any], sizes: list[tuple[int, int]]) -> list[Any]:
        checked: list[Any] = []
        for size, out in zip(sizes, outs):
            shape = tuple(np.shape(out.pred))
            if shape != tuple(size) or np.shape(out.confidence) != shape:
                checked.append(SampleError(INFERENCE, f"engine returned a {shape} mask for a {tuple(size)} image"))
            else:
                checked.append(out)
        return checked

    def _encode(self, sample: SampleResult, out: Any) -> SampleResult:
        # the row keeps the image's size (set when decoded); the maps may be stored smaller
        enc = encode_masks(np.asarray(out.pred), np.asarray(out.confidence), self.fmt,
                           getattr(out, "ignored", None), getattr(out, "mean_confidence", None),
                           image_size=(sample.height, sample.width))
        sample.label_png, sample.conf_png = enc.label_png, enc.conf_png
        sample.mean_confidence, sample.ignored_pixels = enc.mean_confidence, enc.ignored_pixels
        sample.classes, sample.class_pixels = enc.classes, enc.class_pixels
        sample.labeled_at = dt.datetime.now(dt.timezone.utc)
        return sample

    # -- output ------------------------------------------------------------------------------

    def _write(self, chunk: list[tuple[SampleResult, Optional[Future]]], tar: MaskTarWriter,
               rows: list[ManifestRow], result: ShardResult) -> None:
        for sample, encoding in chunk:
            if encoding is not None:
                # re-raises a bug in encoding (not a data problem), or a DeviceFatalError surfaced by
                # the wait for the copy to the host (run/copy_waiter.py): the worker restarts
                encoding.result()
            if sample.ok:
                tar.add(sample)
                result.ok += 1
                for c, n in zip(sample.classes or [], sample.class_pixels or []):
                    result.class_pixels[c] += n
                if sample.source_mode and sample.source_mode != "RGB":
                    result.conversions[sample.source_mode] = result.conversions.get(sample.source_mode, 0) + 1
            else:
                result.errors += 1
                kind = sample.error.kind if sample.error else "unknown"
                result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
            self.health.saw(sample)
            rows.append(sample.to_row(mask_shard_path(result.shard)))
            sample.label_png = sample.conf_png = None
        result.samples = len(rows)
        self.progress(ShardProgress(result.shard, result.samples, result.ok, result.errors))

    def _finish(self, result: ShardResult, t0: float) -> None:
        result.finished_at = utc_now_iso()
        result.seconds = round(time.monotonic() - t0, 3)
        record = DoneRecord.of(result, self.fingerprint)
        # Written last: its presence is what makes the shard complete.
        self.storage.write_done(record)
        level = logging.WARNING if result.status == FAILED else logging.INFO
        log.log(level, "shard %s: %s, %d samples (%d ok, %d errors) in %.1fs%s", result.shard, result.status,
                result.samples, result.ok, result.errors, result.seconds,
                f"; {result.failure}" if result.failure else "")

    def _finish_unreadable(self, result: ShardResult, report: ReadReport, t0: float) -> ShardResult:
        result.status, result.failure = UNREADABLE, report.failure
        result.samples = result.ok = result.errors = 0
        result.finished_at = utc_now_iso()
        result.seconds = round(time.monotonic() - t0, 3)
        log.warning("shard %s: unreadable (%s); nothing written, it will be retried next run",
                    result.shard, report.failure)
        return result


def done_record(result: ShardResult, fingerprint: str) -> dict[str, Any]:
    """The completion record `_done/NAME.json` (schemas/done-v1.json) as a mapping."""
    return DoneRecord.of(result, fingerprint).to_dict()


def _engine_fingerprint(engine: Any, cfg: Config) -> str:
    from pipeline.identity import loaded_identity, resolve_identity

    # An engine that does not expose its vocabulary (test doubles): the identity of the config's files.
    return (loaded_identity(cfg, engine) if hasattr(engine, "vocabulary") else resolve_identity(cfg)).fingerprint


def draft_to(engine: LabelEngine, cfg: Config) -> Optional[Callable[[int, int], tuple[int, int]]]:
    """With io.jpeg_draft, the engine's inference size, for the decoder to draft JPEGs down to;
    None (exact decoding) otherwise, or when the engine cannot label at a size it was not given."""
    if not cfg.io.jpeg_draft:
        return None
    if not isinstance(engine, FullSizeEngine):
        log.warning("io.jpeg_draft is on but engine %s cannot label at the full size from a smaller "
                    "decode; decoding exactly", type(engine).__name__)
        return None
    return engine.inference_size


def min_side(engine: LabelEngine, cfg: Config) -> int:
    """The engine's patch size (an image needs a whole patch), else the config when it gives none."""
    patch = engine.patch_size
    if isinstance(patch, (tuple, list)):
        patch = max(patch)
    return int(patch) if isinstance(patch, (int, np.integer)) and patch > 0 else cfg.io.min_image_side


def _chunks(samples: Iterator[SampleResult], images: int, max_pixels: int = 0) -> Iterator[list[SampleResult]]:
    """Consecutive samples with `images` decoded images each (the last may have fewer), cut early
    once they hold `max_pixels` decoded pixels (0: no pixel bound)."""
    chunk: list[SampleResult] = []
    count = pixels = 0
    for sample in samples:
        chunk.append(sample)
        if sample.ok:
            count += 1
            pixels += int(np.prod(np.shape(sample.rgb)[:2])) if sample.rgb is not None else 0
        if count == images or (max_pixels and pixels >= max_pixels):
            yield chunk
            chunk, count, pixels = [], 0, 0
    if chunk:
        yield chunk


def _pieces(chunk: list, rows: int) -> Iterator[list]:
    """A regrouped window written (and its progress reported) batch_size rows at a time, as an
    ungrouped chunk would be: regrouping changes what runs together, not how often the bar moves."""
    for start in range(0, len(chunk), rows):
        yield chunk[start : start + rows]


def _batches(samples: Sequence[SampleResult], batch_size: int,
             key: Optional[Callable[[int, int], Any]]) -> list[list[int]]:
    """Indices into `samples`, cut into engine calls of at most batch_size images. With a key,
    full batches of one key come first, then the remainders of every key, packed together in
    order (the engine still groups those by shape inside one call, so none runs alone
    needlessly). Without one: consecutive batches."""
    if key is None:
        return [list(range(i, min(i + batch_size, len(samples)))) for i in range(0, len(samples), batch_size)]
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(key(s.height, s.width), []).append(i)
    calls: list[list[int]] = []
    rest: list[int] = []
    for members in groups.values():
        full = len(members) - len(members) % batch_size
        calls += [members[i : i + batch_size] for i in range(0, full, batch_size)]
        rest += members[full:]
    return calls + [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]
