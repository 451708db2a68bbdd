#!/usr/bin/env bash
# Installs vllm-service, its compiled llama.cpp engine and the bundled model into a virtualenv:
# the container image's install step (deploy/docker/Dockerfile runs it) and a test of it (the
# suite runs it into a fresh virtualenv, then serves from the result read-only as an
# unprivileged user: tests/integration/test_container_runtime.py).
#
#   deploy/docker/install.sh [SOURCE_DIR]      (default: the repository this script is in)
#
# Environment:
#   PREFIX   the virtualenv to create (default /opt/vllm-service)
#   PYTHON   the interpreter it is made from (default python3; 3.11 or newer)
#   EXTRAS   the project's extras (default quality,tracing)
#   ENGINE   cpu (default) or cuda: llama.cpp's CUDA build (needs nvcc; CUDA_ARCHITECTURES
#            narrows the GPUs compiled for, e.g. "80;90")
set -euo pipefail

src=${1:-$(cd "$(dirname "$0")/../.." && pwd)}
prefix=${PREFIX:-/opt/vllm-service}
python=${PYTHON:-python3}
extras=${EXTRAS:-quality,tracing}
engine=${ENGINE:-cpu}

case "$engine" in
    cpu) ;;
    cuda)
        export CMAKE_ARGS="-DGGML_CUDA=on${CUDA_ARCHITECTURES:+ -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES} ${CMAKE_ARGS:-}"
        # The CUDA build differs from the CPU wheel pip may have cached: build it afresh.
        export PIP_NO_CACHE_DIR=1
        ;;
    *)
        echo "install.sh: ENGINE must be cpu or cuda, not '$engine'" >&2
        exit 2
        ;;
esac

"$python" -m venv "$prefix"
"$prefix/bin/python" -m pip install --quiet --upgrade pip
"$prefix/bin/python" -m pip install --quiet "$src[$extras]"

# The install works: the command runs, the engine's native library loads, the model is there.
"$prefix/bin/vllm-service" --version
"$prefix/bin/python" - <<'PY'
import llama_cpp
from vllm_service.engine.llamacpp.model_files import bundled_model_path

path = bundled_model_path()
assert path.is_file(), path
print(f"llama.cpp {llama_cpp.__version__}; bundled model {path} ({path.stat().st_size >> 20} MiB)")
PY
