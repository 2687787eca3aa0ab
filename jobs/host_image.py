"""Emulate the GPU host's Python packages here: hide every installed distribution its image lacks.

The host's CUDA image (workplace notes, read 2026-11-17) holds the distributions in HOST_IMAGE and,
with them, what they require. Installing a meta-path finder that refuses any other top-level module
(unless it was installed from the carried wheels) makes an import of the project fail here exactly
where it would fail there, so the carried wheel list is known to be complete before a GPU window.
"""
from __future__ import annotations

import importlib.machinery
import importlib.metadata
import re
import sys
from pathlib import Path
from typing import Optional

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
