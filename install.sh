#!/usr/bin/env bash
# Create or update the virtual environment .venv with everything PMRF needs.
# Idempotent: running it again only installs what is missing or out of range.
set -euo pipefail
cd "$(dirname "$0")"

pick_python() {
  for py in "${PYTHON:-}" python3.12 python3.11 python3.10 python3; do
    [ -n "$py" ] || continue
    command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "install.sh: needs Python 3.10, 3.11 or 3.12 (set PYTHON=/path/to/python)" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  "$(pick_python)" -m venv .venv
fi
# This machine's pip configuration may name package mirrors that lack some packages; pip warns
# about each of them. Keep real errors, drop that noise.
pip() {
  .venv/bin/python -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

pip install -q --upgrade pip setuptools wheel
# torch first: natten and BasicSR build against the installed torch (no build isolation).
grep -E '^(torch|torchvision)[<>=! ]' requirements.txt | pip install -q -r /dev/stdin
grep -vE '^(torch|torchvision)[<>=! ]|# no-(deps|build-isolation)' requirements.txt | pip install -q -r /dev/stdin
grep -E '# no-deps' requirements.txt | sed 's/#.*//' | pip install -q --no-deps -r /dev/stdin
grep -E '# no-build-isolation' requirements.txt | sed 's/#.*//' | pip install -q --no-build-isolation -r /dev/stdin
.venv/bin/python -c "import torch, torchvision, natten; import compat.basicsr_torchvision, basicsr; print('install ok: torch', torch.__version__, '| torchvision', torchvision.__version__, '| natten', natten.__version__, '| cuda' if torch.cuda.is_available() else '| cpu')"
