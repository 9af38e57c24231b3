#!/usr/bin/env bash
# The wheels bench/gpu_extract.py needs on the GPU machine (`device` tool) beyond its image,
# which has JAX, PyTorch, numpy, h5py, Pillow, PyYAML, rich, absl-py and ml-dtypes but no
# Keras, no pydantic and no package index. Downloads them for that machine's Python (3.12,
# x86-64 Linux) into .whl/ (ignored by git), at the versions the project's environment runs and
# tests (the python on the PATH, or $PYTHON).
#
#   bench/device_wheels.sh [folder] [python version]
#
# There, first: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#   --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"
python_version="${2:-3.12}"

version() {  # the installed version of a distribution, as pip sees it here
  "${PYTHON:-python}" -c "from importlib.metadata import version; print(version('$1'))"
}

packages=()
for name in keras namex optree pydantic pydantic_core annotated-types typing-inspection \
            typing_extensions; do
  packages+=("$name==$(version "$name")")
done

rm -rf "$dest"
"${PYTHON:-python}" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$dest" "${packages[@]}"
ls -1 "$dest"
du -sh "$dest"
