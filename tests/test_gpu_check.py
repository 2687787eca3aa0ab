"""jobs/gpu_check.sh in its dry run: both commands' plumbing on CPU, every step ok, at most 8 files
each, step limits that fit 5 minutes on the GPU."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS = {"throughput": ["install", "env", "agreement", "throughput"],
         "profile": ["install", "probe", "compile", "codecs", "idle", "gpu_tests"]}
FILES = {"throughput": {"env.json", "throughput.json"}, "profile": {"probe.json", "compile.json", "codecs.json", "idle.json"}}


def test_each_command_fits_five_minutes_on_the_gpu():
    script = (REPO / "jobs/gpu_check.sh").read_text()
    for mode, steps in STEPS.items():
        block = script.split(f'if [ "$mode" = throughput ]; then')[1]
        block = block.split("else")[0] if mode == "throughput" else block.split("else")[1].split("fi")[0]
        limits = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s*step (\w+) (\d+) ", block, re.M)}
        assert list(limits) == steps
        assert sum(limits.values()) + 5 * len(limits) <= 290, (mode, limits)  # limits plus kill grace


def test_a_missing_mode_is_refused():
    proc = subprocess.run(["bash", str(REPO / "jobs/gpu_check.sh")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "throughput|profile" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("mode", ["throughput", "profile"])
def test_dry_run_writes_an_ok_summary(tmp_path, mode):
    out = tmp_path / mode
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "OUT": str(out)}
    proc = subprocess.run(["bash", str(REPO / "jobs/gpu_check.sh"), mode], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == mode and [s["step"] for s in summary["steps"]] == STEPS[mode]
    bad = {s["step"]: s["status"] for s in summary["steps"] if s["status"] != "ok"}
    assert not bad, f"{bad}\n" + (out / "check.log").read_text()[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and set(summary["files"]) == set(files) and FILES[mode] <= set(files)
    for name in FILES[mode]:
        assert json.loads((out / name).read_text()), name
    results = summary["results"]
    if mode == "throughput":
        rows = json.loads((out / "throughput.json").read_text())["rows"]
        assert {(r["mode"], r["precision"]) for r in rows} == {("slide", "bfloat16"), ("slide", "float32"),
                                                              ("whole", "bfloat16")}
        assert all(r.get("single_images_per_s", 0) == 0 for r in rows)  # no single-image passes
        assert results["slide_bfloat16_engine_images_per_s"] > 0 and results["slide_float32_end_to_end_images_per_s"] > 0
        assert 0 < results["agreement_bf16_vs_float32"]["min"] <= 1
        assert "passed" in (out / "agreement.log").read_text()
    else:
        probe = json.loads((out / "probe.json").read_text())[0]
        assert {"trunk", "first_head", "last_block", "pamr_sparse", "pamr_shifted", "pamr_stencil"} <= set(probe["ms"])
        assert results["idle_source"] == "predict_time" and 0 <= results["idle_share"] <= 1  # no NVML on CPU
        assert [r["compile_trunk"] for r in results["compile_trunk"]] == [False, True]
        assert "passed" in (out / "gpu-tests.log").read_text()


def test_idle_share_trusts_nvml_over_time_in_predict():
    sys.path.insert(0, str(REPO / "jobs"))
    from gpu_idle import idle_share

    # A saturated GPU: predict only queues kernels (0.1 s of a 10 s run), NVML says 98% busy.
    share, source = idle_share([97, 99], 0.1, 10.0)
    assert source == "nvml" and share == pytest.approx(0.02)
    share, source = idle_share([], 6.0, 10.0)  # no NVML (a CPU device): the time outside predict
    assert source == "predict_time" and share == pytest.approx(0.4)
