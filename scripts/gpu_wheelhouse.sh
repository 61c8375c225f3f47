#!/usr/bin/env bash
# Wheels for the GPU machine (Python 3.12, no network; torch, transformers, accelerate, peft, pandas,
# matplotlib, pyarrow, typer, rich are already there): the pure-Python packages kto-bench and its bench
# peers need, at the versions in .ci/constraints.txt, into .whl/ (git-ignored; carry it).
#   bash scripts/gpu_wheelhouse.sh            # here, where pip reaches PyPI
#   device run, carry [".whl"]:  bash scripts/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl
mkdir -p "$out"
pin() { grep -i -E "^$1==" .ci/constraints.txt | head -1; }
wheels=(trl datasets dill multiprocess xxhash lm_eval evaluate pytablewriter DataProperty mbstrdecoder
        pathvalidate tabledata tcolorpy typepy chardet more-itertools nltk pydantic pydantic_core
        annotated-types typing-inspection fsspec defusedxml)  # huggingface_hub, filelock: the image has them
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for name in "${wheels[@]}"; do
  spec=$(pin "$name"); spec=${spec:-$name}
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$out" "$spec"
done
# sdist-only, pure Python: build the wheel here
for name in rouge_score sqlitedict word2number; do
  spec=$(pin "$name"); spec=${spec:-$name}
  python3 -m pip wheel -q --no-deps -w "$out" "$spec"
done
du -sh "$out"
