"""`pseudolabel bench --host`: the host's work per photo with an instant engine, through the CLI."""
import json

from pipeline.cli import main


def test_host_bench_writes_default_beside_reference(tmp_path, capsys):
    out = tmp_path / "host.json"
    assert main(["bench", "--host", "--megapixels", "0.3,1", "--images", "2", "--repeats", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [s["megapixels"] for s in doc["sizes"]] == [0.3, 1.0]
    for size in doc["sizes"]:
        for name in ("default", "reference"):
            assert size[name]["host_core_ms"] > 0 and size[name]["mask_bytes"] > 0
    one = doc["sizes"][1]  # 1 MP (1225x816): labels stored at 768, confidence at 384 by default
    assert one["default"]["mask_bytes"] < one["reference"]["mask_bytes"] / 2
    assert "photos/core-s" in capsys.readouterr().out


def test_host_bench_refuses_bad_sizes(capsys):
    assert main(["bench", "--host", "--megapixels", "two"]) == 2
    assert main(["bench", "--host", "--megapixels", "0"]) == 2
    assert "megapixels" in capsys.readouterr().err
