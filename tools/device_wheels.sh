#!/usr/bin/env bash
# The wheels tools/device_check.sh needs on the lent GPU machine, whose image lacks them (or has older ones):
# downloaded here into .whl/ (ignored by git: add `/.whl/` to .git/info/exclude), carried with `carry: [".whl"]`.
# Versions are this project's pins (constraints.txt). About 19 MB. Not carried: huggingface_hub 2.x (needs httpx2;
# the image's 1.33 satisfies transformers), Ray (too large; its tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
pins=()
for name in transformers nltk fastapi starlette uvicorn pydantic pydantic_core annotated-types typing-inspection gguf \
            defusedxml opentelemetry-api; do
  pin=$(grep -i -m1 "^${name}==" constraints.txt) || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
  pins+=("$pin")
done
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls .whl
