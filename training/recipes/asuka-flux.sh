#!/usr/bin/env bash
# Train ASUKA for the FLUX.1-Fill backbone, every stage in order: asuka-flux.sh DATA OUT [recipe flags]
# (python training/recipe.py --help; docs/training.md "One command per backbone"). Set PYTHON to choose the interpreter.
set -euo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: $0 DATA OUT [training/recipe.py flags]" >&2
  exit 2
fi
exec "${PYTHON:-python}" "$(dirname "$0")/../recipe.py" --backbone flux "$@"
