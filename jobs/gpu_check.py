"""The steps of jobs/gpu_check.sh that are Python: each writes one JSON file into --out.

    python jobs/gpu_check.py STEP --out DIR [--dry-run]
    STEP: env | throughput | compile | probe | codecs | idle | summary
    (jobs/gpu_check.sh throughput: env, throughput; jobs/gpu_check.sh profile: the others)

--dry-run runs the same code on the CPU with the golden tiny CLIP and a few small images, so the
whole check is known to work before a GPU window opens. `env --host-image` hides every installed
distribution the GPU host's image does not have (except those under --carried), so that importing
the project proves the carried wheels complete.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "jobs")]

# What the GPU check imports, by module: the engine, the shard stage, the benchmark, the tests.
CHECK_MODULES = ("pipeline.engine", "pipeline.engine.probe", "pipeline.benchmark", "pipeline.run.stage",
                 "pipeline.io.shards", "pipeline.commands.bench", "pipeline.cli", "open_clip", "ftfy",
                 "braceexpand", "pytest")
VERSIONS = ("torch", "torchvision", "open_clip_torch", "ftfy", "wcwidth", "braceexpand", "numpy", "pillow",
            "pyarrow", "fsspec", "pyyaml", "timm", "huggingface-hub", "pytest", "nvidia-cusparse",
            "nvidia-cudnn-cu13", "triton")


def _write(out: Path, name: str, doc: Any) -> None:
    (out / name).write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {out / name}")


def _config(dry: bool, sets: list[str]):
    from pipeline.config import load_config

    if dry:  # small crops of small images: the same code paths (several crops per image, SFR, PAMR)
        tiny = ["device=cpu", "inference.short_side=96", "inference.slide_crop=64", "inference.slide_stride=32"]
        return load_config(ROOT / "conf/bench/cpu_tiny.yaml", tiny + list(sets))
    return load_config(ROOT / "conf/bench/gpu_vitb16.yaml", sets)


def _images(dry: bool, n: int):
    from pipeline.benchmark import bench_images

    return bench_images(n, (96, 128) if dry else (336, 448))


# -- env ------------------------------------------------------------------------------------------

def step_env(args: argparse.Namespace) -> None:
    if args.host_image:
        from host_image import hide_missing_distributions

        hidden = hide_missing_distributions(Path(args.carried) if args.carried else None)
    else:
        hidden = []
    imported, failed = [], {}
    for mod in CHECK_MODULES:
        try:
            importlib.import_module(mod)
            imported.append(mod)
        except Exception as exc:  # noqa: BLE001 - recorded, then the step fails below
            failed[mod] = f"{type(exc).__name__}: {exc}"
    import torch

    doc: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "imported": imported,
        "import_failures": failed, "hidden_modules": sorted(hidden), "versions": _versions(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
    }
    if torch.cuda.is_available():
        doc.update(_cuda_facts(torch))
    _write(args.out, "env.json", doc)
    if failed:
        raise SystemExit(f"imports failed: {failed}")


def _versions() -> dict[str, str]:
    found = {}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _cuda_facts(torch: Any) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    # Load cuSPARSE through a CSR product, then ask the loaded library its version.
    a = torch.eye(4, device="cuda").to_sparse_csr()
    (a @ torch.ones(4, 2, device="cuda")).sum().item()
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True, check=False)
    return {"gpu": props.name, "sms": props.multi_processor_count, "memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}", "cusparse": _cusparse_version(),
            "nvidia_smi": smi.stdout.strip(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}


def _cusparse_version() -> str | None:
    import ctypes

    libs = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
            if "libcusparse.so" in line}
    for lib in libs:
        try:
            handle = ctypes.CDLL(lib)
            parts = []
            for kind in range(3):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
                value = ctypes.c_int()
                handle.cusparseGetProperty(kind, ctypes.byref(value))
                parts.append(str(value.value))
            return f"{'.'.join(parts)} ({lib})"
        except (OSError, AttributeError):
            continue
    return None


# -- throughput (first command) ------------------------------------------------------------------

def step_throughput(args: argparse.Namespace) -> None:
    """The paper's setting (sliding 224/112, short side 336) in bf16 and float32: engine images/s
    per batch size and end to end through the shard stage, no single-image passes (the CPU bench
    has that ratio) and no section profile (the second command has it); then whole-image bf16
    engine-only, and the pixel agreement of bf16 with float32 on the benchmark's images. Written
    after every row, so a row cut by the limit leaves the ones before it."""
    from pipeline.benchmark import run_benchmark

    dry = args.dry_run
    n, batches = (2, [2]) if dry else (128, [32, 64])
    images = _images(dry, n)
    doc: dict[str, Any] = {"rows": []}
    for precision in ("bfloat16", "float32"):
        cfg = _config(dry, [f"precision={precision}"])
        t0 = time.perf_counter()
        res = run_benchmark(cfg, images, batches, single=False, profile=False).to_json()
        doc["rows"].append({"mode": "slide", "precision": precision, "seconds": time.perf_counter() - t0, **res})
        print(f"slide {precision}: engine {res['engine_images_per_s']:.1f} images/s, end to end "
              f"{res['end_to_end_images_per_s']:.1f}, MFU {res['mfu']}")
        _write(args.out, "throughput.json", doc)
    doc["agreement_bf16_vs_float32"] = _agreement(dry, images[: 2 if dry else 16])
    _write(args.out, "throughput.json", doc)
    doc["rows"].append(_engine_only(_config(dry, ["precision=bfloat16", "inference.slide_crop=0"]), images,
                                    batches[-1:], "bfloat16", "whole"))
    _write(args.out, "throughput.json", doc)


def _agreement(dry: bool, images: list) -> dict[str, Any]:
    """Share of label pixels bf16 gives as float32 (TF32 off) does, per image, at the paper's setting."""
    import numpy as np

    from pipeline.engine import Segmenter

    preds = {}
    for precision in ("float32", "bfloat16"):
        seg = Segmenter.from_config(_config(dry, [f"precision={precision}", "inference.tf32=false"]))
        preds[precision] = [np.asarray(o.pred) for o in seg.predict(images, return_probs=False)]
        del seg
    shares = [float((a == b).mean()) for a, b in zip(preds["float32"], preds["bfloat16"])]
    print(f"bf16 vs float32 pixel agreement: min {min(shares):.4f}, mean {float(np.mean(shares)):.4f}")
    return {"images": len(shares), "min": min(shares), "mean": float(np.mean(shares))}


# -- compile (second command) ---------------------------------------------------------------------

def step_compile(args: argparse.Namespace) -> None:
    """bf16 engine-only with and without `inference.compile_trunk`: does the compiled trunk pay, at
    what one-off compile time. Written after each row."""
    dry = args.dry_run
    images = _images(dry, 2 if dry else 64)
    rows: list[dict[str, Any]] = []
    for flag in (False, True):
        rows.append(_compile_trunk_run(dry, images, 2 if dry else 32, flag))
        _write(args.out, "compile.json", rows)


def _compile_trunk_run(dry: bool, images: list, bs: int, flag: bool) -> dict[str, Any]:
    """Engine-only bf16 at one batch size with and without `inference.compile_trunk`: does the
    compiled trunk pay, and what does its one-off compile cost (the first call's seconds). The
    warm-up is at the timed batch size, so no compile is spent on another shape. A failure is
    recorded, not raised: the rows above are the step's main result."""
    from pipeline.engine import Segmenter

    row: dict[str, Any] = {"mode": "slide", "precision": "bfloat16", "compile_trunk": flag, "engine_by_batch": {}}
    try:
        seg = Segmenter.from_config(_config(dry, ["precision=bfloat16", f"inference.compile_trunk={str(flag).lower()}"]))
        t0 = time.perf_counter()
        seg.predict(images[:bs], return_probs=False)
        _sync(seg.device)
        row["first_call_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(0, len(images), bs):
            seg.predict(images[i : i + bs], return_probs=False)
        _sync(seg.device)
        row["engine_by_batch"] = {str(bs): len(images) / (time.perf_counter() - t0)}
    except Exception as exc:  # noqa: BLE001 - the measurement's answer, not the step's failure
        row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    print(f"slide bfloat16 compile_trunk={flag}: {row}")
    return row


def _engine_only(cfg: Any, images: list, batches: list[int], precision: str, mode: str = "slide") -> dict[str, Any]:
    from pipeline.engine import Segmenter

    seg = Segmenter.from_config(cfg)
    seg.predict(images[:1], return_probs=False)
    rates = {}
    for bs in batches:
        seg.predict(images[:bs], return_probs=False)  # warm-up at this batch size (compiles, allocator)
        _sync(seg.device)
        t0 = time.perf_counter()
        for i in range(0, len(images), bs):
            seg.predict(images[i : i + bs], return_probs=False)
        _sync(seg.device)
        rates[str(bs)] = len(images) / (time.perf_counter() - t0)
    print(f"{mode} {precision}: engine {rates} images/s")
    return {"mode": mode, "precision": precision, "engine_by_batch": rates}


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- probe ----------------------------------------------------------------------------------------

def step_probe(args: argparse.Namespace) -> None:
    from pipeline.engine import Segmenter
    from pipeline.engine.probe import stage_times

    dry = args.dry_run
    images = _images(dry, 1 if dry else 8)
    doc = []
    for precision in ("bfloat16",) if dry else ("bfloat16", "float32"):
        seg = Segmenter.from_config(_config(dry, [f"precision={precision}"]))
        doc.append(stage_times(seg, images, repeats=1 if dry else 5, compile_stencil=not dry))
        print(json.dumps(doc[-1]["ms"]))
    _write(args.out, "probe.json", doc)


# -- codecs ---------------------------------------------------------------------------------------

def step_codecs(args: argparse.Namespace) -> None:
    """Decode (full, and Pillow's JPEG draft at half size) and mask PNG encoding per zlib level,
    single-threaded and on N threads: how many cores a GPU's image rate needs."""
    import numpy as np
    from PIL import Image

    from pipeline.io.masks import LabelFormat, encode_masks

    dry = args.dry_run
    sizes = [(96, 128)] if dry else [(336, 448), (768, 1024)]
    reps = 4 if dry else 40
    cores = len(os.sched_getaffinity(0))
    doc: dict[str, Any] = {"cores": cores, "decode": {}, "encode": {}}
    for h, w in sizes:
        img = _images(dry, 1)[0] if (h, w) == (96, 128) else np.asarray(Image.fromarray(_images(False, 1)[0]).resize((w, h)))
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        data = buf.getvalue()
        key = f"{h}x{w}"
        doc["decode"][key] = {
            "full_ms": _ms(lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), reps),
            "draft_half_ms": _ms(lambda: np.asarray(_draft(data, (w // 2, h // 2))), reps),
            "images_per_s_all_cores": _parallel_rate(lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
                                                     cores, reps * cores),
        }
        pred = (np.arange(h * w).reshape(h, w) // 997 % 21).astype(np.int64)
        conf = np.random.default_rng(0).random((h, w), dtype=np.float32)
        doc["encode"][key] = {f"zlib_{level}_ms": _ms(lambda lv=level: encode_masks(pred, conf, LabelFormat(21, 0.0, lv)), reps)
                              for level in (0, 1, 6)}
    _write(args.out, "codecs.json", doc)
    print(json.dumps(doc))


def _draft(data: bytes, size: tuple[int, int]) -> Any:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.draft("RGB", size)  # JPEG DCT scaling: decodes at 1/2, 1/4 or 1/8 size directly
    return img.convert("RGB")


def _ms(fn: Any, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return 1000 * (time.perf_counter() - t0) / reps


def _parallel_rate(fn: Any, threads: int, n: int) -> float:
    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda _: fn(), range(n)))
        return n / (time.perf_counter() - t0)


# -- idle -----------------------------------------------------------------------------------------

def step_idle(args: argparse.Namespace) -> None:
    """The shard stage end to end on one shard: the share of wall time the engine is not busy,
    and where NVML answers, the GPU's own utilisation sampled every 50 ms."""
    from gpu_idle import measure_idle

    dry = args.dry_run
    cfg = _config(dry, ["precision=bfloat16", "batch_size=2" if dry else "batch_size=32"])
    doc = measure_idle(cfg, _images(dry, 4 if dry else 256))
    _write(args.out, "idle.json", doc)
    print(json.dumps(doc))


# -- summary --------------------------------------------------------------------------------------

def step_summary(args: argparse.Namespace) -> None:
    """steps.tsv (name, status, seconds, limit, rc) from the shell -> summary.json."""
    steps = []
    for line in (args.out / "steps.tsv").read_text().splitlines():
        name, status, seconds, limit, rc = line.split("\t")
        steps.append({"step": name, "status": status, "seconds": float(seconds), "limit_s": int(limit),
                      "rc": int(rc)})
    (args.out / "steps.tsv").unlink()
    doc = {"mode": args.mode, "dry_run": args.dry_run, "ok": all(s["status"] == "ok" for s in steps),
           "seconds": round(sum(s["seconds"] for s in steps), 1), "steps": steps,
           "files": sorted(p.name for p in args.out.iterdir()) + ["summary.json"],
           "results": _headline(args.out)}
    _write(args.out, "summary.json", doc)


def _headline(out: Path) -> dict[str, Any]:
    """The answers each command exists for, lifted from its files (absent when a step did not write)."""
    found: dict[str, Any] = {}
    if (out / "throughput.json").is_file():
        doc = json.loads((out / "throughput.json").read_text())
        for row in doc.get("rows", []):
            key = f"{row['mode']}_{row['precision']}"
            found[f"{key}_engine_images_per_s"] = max(row.get("engine_by_batch", {}).values(), default=None)
            if row.get("end_to_end_images_per_s"):
                found[f"{key}_end_to_end_images_per_s"] = row["end_to_end_images_per_s"]
        found["agreement_bf16_vs_float32"] = doc.get("agreement_bf16_vs_float32")
    if (out / "idle.json").is_file():
        idle = json.loads((out / "idle.json").read_text())
        found["idle_share"], found["idle_source"] = idle.get("idle_share"), idle.get("idle_source")
    if (out / "compile.json").is_file():
        found["compile_trunk"] = [{k: r.get(k) for k in ("compile_trunk", "first_call_s", "engine_by_batch", "error")}
                                  for r in json.loads((out / "compile.json").read_text())]
    return found


STEPS = {"env": step_env, "throughput": step_throughput, "compile": step_compile, "probe": step_probe,
         "codecs": step_codecs, "idle": step_idle, "summary": step_summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--host-image", action="store_true", help="env: hide what the GPU host lacks")
    parser.add_argument("--carried", help="env: folder of the installed carried wheels")
    parser.add_argument("--mode", default="", help="summary: which command (throughput or profile)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    STEPS[args.step](args)


if __name__ == "__main__":
    main()
