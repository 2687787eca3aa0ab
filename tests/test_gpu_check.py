"""jobs/gpu_check.sh in its dry run: every step's plumbing on CPU, every step ok, at most 8 files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STEPS = ["install", "env", "gpu_tests", "bench", "probe", "codecs", "idle"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dry_run_writes_an_ok_summary(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "OUT": str(out)}
    proc = subprocess.run(["bash", str(REPO / "jobs/gpu_check.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == STEPS
    bad = {s["step"]: s["status"] for s in summary["steps"] if s["status"] != "ok"}
    assert not bad, f"{bad}\n" + (out / "check.log").read_text()[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and set(summary["files"]) == set(files)
    for name in ("env.json", "bench.json", "probe.json", "codecs.json", "idle.json"):
        assert json.loads((out / name).read_text()), name
    bench = json.loads((out / "bench.json").read_text())
    assert {r["mode"] for r in bench} == {"slide", "whole"} and all(
        v > 0 for r in bench for v in r["engine_by_batch"].values())
    probe = json.loads((out / "probe.json").read_text())[0]
    assert {"trunk", "first_head", "last_block", "pamr_sparse", "pamr_shifted", "pamr_stencil"} <= set(probe["ms"])
    assert "passed" in (out / "gpu-tests.log").read_text()


def test_idle_share_trusts_nvml_over_time_in_predict():
    sys.path.insert(0, str(REPO / "jobs"))
    from gpu_idle import idle_share

    # A saturated GPU: predict only queues kernels (0.1 s of a 10 s run), NVML says 98% busy.
    share, source = idle_share([97, 99], 0.1, 10.0)
    assert source == "nvml" and share == pytest.approx(0.02)
    share, source = idle_share([], 6.0, 10.0)  # no NVML (a CPU device): the time outside predict
    assert source == "predict_time" and share == pytest.approx(0.4)
