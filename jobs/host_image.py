"""Emulate the GPU host's Python packages here: hide every installed distribution its image lacks.

The host's CUDA image (workplace notes, read 2026-11-17) holds the distributions in HOST_IMAGE and,
with them, what they require. Installing a meta-path finder that refuses any other top-level module
(unless it was installed from the carried wheels) makes an import of the project fail here exactly
where it would fail there, so the carried wheel list is known to be complete before a GPU window.
"""
from __future__ import annotations

import importlib.machinery
import importlib.metadata
import json
import re
import sys
from pathlib import Path
from typing import Any, Optional

HOST_IMAGE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
PROJECT = {"pipeline", "jobs", "tests", "conftest", "_pytest", "py"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def host_distributions() -> set[str]:
    """HOST_IMAGE and everything its installed members require here (their image installs those too)."""
    seen, todo = set(), [_norm(n) for n in HOST_IMAGE]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for req in reqs:
            if "extra ==" in req:
                continue
            todo.append(_norm(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]))
    return seen


class _HideMissing:
    def __init__(self, allowed: set[str], carried: Optional[Path]):
        self.allowed = allowed
        self.carried = carried.resolve() if carried else None
        self.owners = importlib.metadata.packages_distributions()
        self.hidden: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        if "." in name or name in sys.stdlib_module_names or name in PROJECT:
            return None
        dists = {_norm(d) for d in self.owners.get(name, [])}
        if not dists or dists & self.allowed:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name)
        origin = Path(spec.origin or next(iter(spec.submodule_search_locations or []), "")) if spec else None
        if origin and self.carried and self.carried in origin.resolve().parents:
            return None
        self.hidden.add(name)
        raise ModuleNotFoundError(f"{name} ({', '.join(sorted(dists))}) is not in the GPU host's image "
                                  "nor among the carried wheels", name=name)


def hide_missing_distributions(carried: Optional[Path]) -> list[str]:
    """Install the finder first on sys.meta_path; returns the list it fills with what it hid."""
    finder = _HideMissing(host_distributions(), carried)
    sys.meta_path.insert(0, finder)
    return finder.hidden  # type: ignore[return-value]  # filled as imports happen


# -- the wheel set for Python 3.12 (jobs/fetch_gpu_wheels.sh --check) --------------------------------

# Provided by the host image at these versions; resolved as dependency-free stand-in wheels with a
# local version label that no index has, so pip neither downloads torch (530 MiB; this registry
# serves no metadata-only form of it) nor re-resolves the image's CUDA libraries.
HOST_TORCH = {"torch": "2.11.0+hostimage", "torchvision": "0.26.0+hostimage"}
# What the GPU check imports (directly or through the package); ray, webdataset and s3fs are
# runtime requirements it does not need (tests, benchmark and probes use the engine and the stage).
CHECK_ROOTS = ("open-clip-torch", "ftfy", "braceexpand", "numpy", "pillow", "pyarrow", "pandas", "fsspec",
               "pyyaml", "tqdm", "rich", "matplotlib", "pytest", "pytest-timeout")


def write_stub_wheels(dest: Path) -> list[Path]:
    """One empty wheel per HOST_TORCH entry (METADATA, WHEEL, RECORD; no requirements)."""
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, version in HOST_TORCH.items():
        info = f"{name}-{version}.dist-info"
        files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                 f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: host_image\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
        files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
        path = dest / f"{name}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            for arc, text in files.items():
                zf.writestr(arc, text)
        paths.append(path)
    return paths


def _graph(report: dict) -> dict[str, list[tuple[str, set[str], Any]]]:
    """name -> [(required name, its extras, marker)] from a `pip install --report` document."""
    from packaging.requirements import Requirement

    graph = {}
    for item in report["install"]:
        reqs = [Requirement(r) for r in item["metadata"].get("requires_dist") or []]
        graph[_norm(item["metadata"]["name"])] = [(_norm(r.name), set(r.extras), r.marker) for r in reqs]
    return graph


def _reachable(graph: dict, roots: dict[str, set[str]]) -> set[str]:
    """Names reached from roots (name -> extras asked for) under Python 3.12 on Linux x86-64."""
    env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    seen, todo = set(), list(roots.items())
    while todo:
        name, extras = todo.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        for dep, dep_extras, marker in graph[name]:
            if marker is None or any(marker.evaluate({**env, "extra": e}) for e in extras | {""}):
                todo.append((dep, dep_extras))
    return seen


def check_wheel_set(report_path: Path, carried: Path, roots: dict[str, set[str]]) -> dict[str, Any]:
    """What a cp312 resolution of the project needs beyond the host image and the carried wheels:
    for the GPU check (should be nothing) and for the whole runtime (ray and what only it needs)."""
    report = json.loads(report_path.read_text())
    graph = _graph(report)
    have = host_distributions() | {_norm(n) for n in HOST_TORCH}
    carried_names = {_norm(p.name.split("-")[0]) for p in carried.glob("*.whl")}
    missing = lambda names: sorted(n for n in names if n not in have and n not in carried_names)  # noqa: E731
    check = _reachable(graph, {n: set() for n in CHECK_ROOTS})
    without_ray = _reachable(graph, {n: e for n, e in roots.items() if n != "ray"})
    return {"resolved": len(graph), "carried": sorted(carried_names),
            "missing_for_gpu_check": missing(check), "missing_for_runtime": missing(_reachable(graph, roots)),
            "missing_for_runtime_without_ray": missing(without_ray)}


def _main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("stubs").add_argument("dest", type=Path)
    chk = sub.add_parser("check")
    chk.add_argument("report", type=Path)
    chk.add_argument("--carried", type=Path, required=True)
    chk.add_argument("--roots", nargs="+", required=True, help="requirements resolved, e.g. ray[default]")
    args = ap.parse_args()
    if args.cmd == "stubs":
        print("\n".join(str(p) for p in write_stub_wheels(args.dest)))
        return
    from packaging.requirements import Requirement

    roots = {_norm(Requirement(r).name): set(Requirement(r).extras) for r in args.roots}
    doc = check_wheel_set(args.report, args.carried, roots)
    print(json.dumps(doc, indent=1))
    if doc["missing_for_gpu_check"]:
        raise SystemExit(f"the GPU check would need more wheels: {doc['missing_for_gpu_check']}")


if __name__ == "__main__":
    _main()
