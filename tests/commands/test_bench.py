"""`pseudolabel bench` measures every path on the same images and writes the promised JSON keys."""
import json

from pipeline.cli import main

from tests.engine.golden_data import GOLDEN


def test_bench_writes_json_with_all_paths(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--set", f"model.pretrained={GOLDEN / 'tiny_clip_openai.pt'}",
               "--set", f"vocabulary.file={GOLDEN / 'vocab_a.txt'}", "--set", "inference.short_side=224",
               "--images", "3", "--size", "224x320", "--batch-sizes", "1,2", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    for key in ("single_images_per_s", "single_engine_kernels_images_per_s", "engine_images_per_s",
                "end_to_end_images_per_s"):
        assert doc[key] > 0, key
    assert doc["engine_images_per_s"] == max(doc["engine_by_batch"].values())
    assert set(doc["engine_by_batch"]) == {"1", "2"}
    assert doc["device"].startswith("cpu") and doc["model"].endswith("tiny_clip_openai.pt")
    assert doc["images"] == 3 and doc["image_size"] == [224, 320]
    assert doc["flops_per_image"] > 0 and doc["peak_memory_mb"] > 0
    assert abs(sum(doc["engine_profile"].values()) - 1.0) < 1e-6
    assert set(doc["end_to_end_profile"]) == {"decode", "inference", "encode_png", "write"}
    printed = capsys.readouterr().out
    assert "authors' structure" in printed and "end to end" in printed
