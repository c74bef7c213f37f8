#!/usr/bin/env bash
# Train ASUKA for the SD-1.5-inpainting backbone, every stage in order: asuka-sd.sh DATA OUT [recipe flags]
# (python training/recipe.py --help; docs/training.md "One command per backbone"). Set PYTHON to choose the interpreter.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 DATA OUT [training/recipe.py flags]" >&2
  exit 2
fi
exec "${PYTHON:-python}" "$(dirname "$0")/../recipe.py" --backbone sd "$@"
