"""`pseudolabel bench`: images/s of the one-at-a-time path, the batched engine and the whole stage."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli import add_config_arguments
from pipeline.config import CONF_DIR, load_config
from pipeline.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--images", type=int, default=16, help="images per measurement (default 16)")
    parser.add_argument("--size", default="336x448", help="HEIGHTxWIDTH of the generated images")
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="engine batch sizes to try")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the shard stage measurement")
    parser.add_argument("--peak-tflops", type=float, help="hardware peak for MFU (known GPUs are looked up)")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--dispatch", action="store_true",
                        help="measure the driver instead: the real dispatcher with instant fake workers")
    parser.add_argument("--shards", type=int, default=10000, help="--dispatch: shards to hand out (default 10000)")
    parser.add_argument("--actors", type=int, default=4, help="--dispatch: fake workers (default 4)")
    parser.add_argument("--corpus", choices=["synthetic", "real"], default="synthetic",
                        help="real: photo-sized JPEGs and benchmark vocabularies (pipeline/bench_real.py)")
    parser.add_argument("--host", action="store_true",
                        help="the host's work per photo alone (instant engine, decoding excluded): core-ms and mask "
                             "bytes per image, default settings beside full-size maps (pipeline/bench_host.py)")
    parser.add_argument("--fidelity", action="store_true",
                        help="--host: also the share of label pixels equal to the full-size path (tiny golden CLIP)")
    parser.add_argument("--megapixels", default=None,
                        help="--corpus real: JPEG sizes in MP (default 0.3,3,12; the full range: 0.3,2,6,12,24); "
                             "--host: photo sizes (default 0.3,2,12)")
    parser.add_argument("--vocabularies", default="voc21,ade20k,coco_stuff", help="--corpus real: conf/vocabularies")
    parser.add_argument("--repeats", type=int, default=2, help="--corpus real: images (and post repeats) per cell")
    parser.add_argument("--post-megapixels", default="0.15,0.8,3,24",
                        help="--corpus real: sizes of the post-processing scaling table ('' to skip)")
    parser.add_argument("--untiled-up-to", type=float, default=0.0,
                        help="--corpus real: also time the untiled post-processing up to this many MP (memory!)")


def main(args: argparse.Namespace) -> int:
    if args.dispatch:
        from pipeline.run.dispatch_bench import main_dispatch

        return main_dispatch(args.shards, args.actors, args.json)
    if args.host:
        return _main_host(args)
    if args.corpus == "real":
        return _main_real(args)
    from pipeline.benchmark import bench_images, run_benchmark

    config = args.config or str(CONF_DIR / "bench" / "cpu_tiny.yaml")
    cfg = load_config(config, args.overrides)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
        batches = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError as exc:
        raise UserError(f"--size is HEIGHTxWIDTH and --batch-sizes a comma list of integers ({exc})") from exc
    images = bench_images(args.images, (height, width))
    res = run_benchmark(cfg, images, batches, end_to_end=not args.no_end_to_end, peak_tflops=args.peak_tflops)
    print(format_result(res.to_json()))
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_json(), indent=1))
    return 0


def _main_real(args: argparse.Namespace) -> int:
    import platform

    import torch

    from pipeline.bench_real import format_post_scaling, format_real_corpus, post_scaling, real_corpus

    cfg = load_config(args.config or str(CONF_DIR / "bench" / "cpu_tiny.yaml"), args.overrides)
    try:
        sizes = [float(v) for v in (args.megapixels or "0.3,3,12").split(",") if v]
        post_sizes = [float(v) for v in args.post_megapixels.split(",") if v]
    except ValueError as exc:
        raise UserError(f"--megapixels and --post-megapixels are comma lists of numbers ({exc})") from exc
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {cfg.device}"
    doc: dict = {"machine": machine}
    if post_sizes:
        doc["post_scaling"] = post_scaling(post_sizes, repeats=max(1, args.repeats), threads=torch.get_num_threads(),
                                           untiled_up_to_mp=args.untiled_up_to)
        print(format_post_scaling(doc["post_scaling"]))
    if sizes:
        doc["real_corpus"] = real_corpus(cfg, sizes, args.vocabularies.split(","), repeats=max(1, args.repeats))
        print(format_real_corpus(doc["real_corpus"], machine))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


def _main_host(args: argparse.Namespace) -> int:
    from pipeline.bench_host import format_host, host_bench, label_fidelity

    try:
        sizes = [float(v) for v in (args.megapixels or "0.3,2,12").split(",") if v]
    except ValueError as exc:
        raise UserError(f"--megapixels is a comma list of numbers ({exc})") from exc
    if not sizes or any(mp <= 0 or mp > 100 for mp in sizes):
        raise UserError("--megapixels: sizes between 0 and 100 MP")
    doc = host_bench(sizes, repeats=max(3, args.repeats), images=max(2, min(args.images, 16)), overrides=args.overrides)
    if args.fidelity:
        doc["fidelity"] = label_fidelity(sizes, overrides=args.overrides)
    print(format_host(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


def format_result(doc: dict) -> str:
    lines = [
        f"device {doc['device']}  model {doc['model']}  images {doc['images']} x {doc['image_size']}",
        f"settings {doc['settings']}",
        f"(a)  authors' structure       {doc['single_images_per_s']:8.2f} images/s",
        f"(a') our kernels, 1 crop/pass {doc['single_engine_kernels_images_per_s']:8.2f} images/s"
        f"  ({doc['single_engine_kernels_images_per_s'] / doc['single_images_per_s']:.2f}x)",
    ]
    for bs, ips in doc["engine_by_batch"].items():
        lines.append(f"(b) engine, batch {bs:>3}        {ips:8.2f} images/s  ({ips / doc['single_images_per_s']:.2f}x)")
    if doc["end_to_end_images_per_s"]:
        lines.append(f"(c) end to end, batch {doc['engine_best_batch']:>3}    {doc['end_to_end_images_per_s']:8.2f} images/s"
                     f"  ({doc['speedup_end_to_end_vs_single']:.2f}x; {doc['end_to_end_vs_engine']:.0%} of engine)")
    lines.append("engine time by section: " + ", ".join(f"{k} {v:.0%}" for k, v in doc["engine_profile"].items()))
    if doc["end_to_end_profile"]:
        lines.append("stage busy ms/image: " + ", ".join(f"{k} {1000 * v:.0f}" for k, v in doc["end_to_end_profile"].items()))
    mfu = f", MFU {doc['mfu']:.1%}" if doc["mfu"] is not None else ""
    lines.append(f"matrix GFLOP/image {doc['flops_per_image'] / 1e9:.2f}, achieved {doc['achieved_tflops']:.3f} TFLOP/s{mfu}")
    lines.append(f"peak memory {doc['peak_memory_mb']:.0f} MiB")
    return "\n".join(lines)
