#!/usr/bin/env bash
# Create or update the virtual environment .venv with everything PMRF needs.
# Idempotent: running it again only installs what is missing or out of range.
#
# Installer: uv when it can be had (bootstrapped into .venv with pip), else pip. Set PMRF_INSTALLER=pip
# to force pip, PMRF_INSTALLER=uv to fail rather than fall back. Both install the same groups of
# requirements.txt in the same order with the same flags, from the same package sources: uv ignores
# pip's configuration, so the sources and constraints pip is configured with (index-url,
# extra-index-url, find-links, constraint: pip.conf files and PIP_* variables) are handed to uv.
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

# The groups of requirements.txt, installed in this order: torch first (natten and BasicSR build
# against the installed torch, without build isolation), then everything else, then the "# no-deps"
# lines, then the "# no-build-isolation" lines. A "uv" line, if any, only pins the installer.
TORCH_RE='^(torch|torchvision)[<>=!~ ]'
UV_RE='^uv[<>=!~ ]'
group() {
  case $1 in
    torch) grep -E "$TORCH_RE" requirements.txt ;;
    rest) grep -vE "$TORCH_RE|$UV_RE|# .*no-(deps|build-isolation)" requirements.txt ;;
    no-deps) grep -E '# .*no-deps' requirements.txt | grep -v 'no-build-isolation' | sed 's/#.*//' || true ;;
    no-build-isolation) grep -E '# .*no-build-isolation' requirements.txt | grep -v 'no-deps' | sed 's/#.*//' || true ;;
    no-deps-no-build-isolation) grep -E '# .*no-deps' requirements.txt | grep 'no-build-isolation' | sed 's/#.*//' || true ;;
  esac
}

installer=${PMRF_INSTALLER:-auto}
case $installer in
  auto | uv | pip) ;;
  *) echo "install.sh: PMRF_INSTALLER must be auto, uv or pip (got '$installer')" >&2; exit 2 ;;
esac

# Fast no-op: after a successful run, .venv/.install-stamp holds a digest of what that run read (this
# script, requirements.txt, compat/, PMRF_INSTALLER) and of what .venv then held (every distribution
# and version), followed by its check line. If nothing of that changed, there is nothing to install
# and nothing new to check. Delete the stamp to force a full run.
STAMP=.venv/.install-stamp
state() {
  local dists
  dists=$(.venv/bin/python -c 'import importlib.metadata as m; print(*sorted(f"{d.name}=={d.version}" for d in m.distributions()))') || return 1
  cat install.sh requirements.txt compat/*.py <(echo "PMRF_INSTALLER=$installer" "$dists") | sha256sum | cut -d' ' -f1
}
if [ -f "$STAMP" ] && [ "$(head -n1 "$STAMP")" = "$(state)" ]; then
  echo "install.sh: .venv is up to date, nothing to install"
  tail -n +2 "$STAMP"
  exit 0
fi
rm -f "$STAMP"

uv_works() { .venv/bin/uv --version >/dev/null 2>&1; }
if [ "$installer" != pip ]; then
  uv_spec=$(grep -E "$UV_RE" requirements.txt | sed 's/#.*//; s/[[:space:]]*$//' || true)
  uv_spec=${uv_spec:-uv}
  if uv_works || { bootstrap=$(pip install -q "$uv_spec" 2>&1) && uv_works; }; then
    installer=uv
  elif [ "$installer" = uv ]; then
    echo "install.sh: could not install uv into .venv (PMRF_INSTALLER=uv): ${bootstrap:-}" >&2; exit 1
  else
    echo "install.sh: could not install uv into .venv ($(tail -n1 <<<"${bootstrap:-}")); falling back to pip" >&2
    installer=pip
  fi
fi
echo "install.sh: installing with $installer"

if [ "$installer" = uv ]; then
  # pip's effective package sources, as uv arguments, one per line (PIP_* variables win over the
  # [install] section, which wins over [global]; missing local folders are left out, as pip ignores them).
  pip_config=$(pip config list 2>/dev/null || true)
  mapfile -t UV_SOURCES < <(.venv/bin/python -c '
import ast, os, sys
from urllib.parse import urlparse, unquote
seen = {}
for line in sys.stdin:
    key, sep, value = line.strip().partition("=")
    section, _, name = key.rpartition(".")
    if not sep or section not in (":env:", "install", "global"):
        continue
    rank = {":env:": 0, "install": 1, "global": 2}[section]
    if name not in seen or rank < seen[name][0]:
        seen[name] = (rank, ast.literal_eval(value))
def local_ok(location):
    if "://" not in location:
        return os.path.exists(location)
    url = urlparse(location)
    return url.scheme != "file" or os.path.exists(unquote(url.path))
flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}
for name, flag in flags.items():
    for location in seen.get(name, (0, ""))[1].split():
        if local_ok(location):
            print(flag); print(location)
' <<<"$pip_config")
  cert=$(sed -n "s/^\(:env:\|global\|install\)\.cert='\(.*\)'$/\2/p" <<<"$pip_config" | head -n1)
  if [ -n "$cert" ] && [ -z "${SSL_CERT_FILE:-}" ] && [ -f "$cert" ]; then export SSL_CERT_FILE=$cert; fi
  install_reqs() {
    # unsafe-best-match: like pip, take the best version across all indexes, not the first index's.
    .venv/bin/uv pip install --python .venv/bin/python --quiet --index-strategy unsafe-best-match \
      "${UV_SOURCES[@]}" "$@"
  }
  # natten builds without build isolation, so the build tools must be in .venv.
  install_reqs setuptools wheel
else
  install_reqs() { pip install -q "$@"; }
  install_reqs --upgrade pip setuptools wheel
fi

install_reqs -r <(group torch)
install_reqs -r <(group rest)
install_reqs --no-deps -r <(group no-deps)
install_reqs --no-build-isolation -r <(group no-build-isolation)
install_reqs --no-deps --no-build-isolation -r <(group no-deps-no-build-isolation)
# Bytecode is written as modules are first imported (here and by the Makefile's targets), not for every
# file of every package at install time: that would add about 45 s, mostly for torch files never imported.
check=$(PYTHONDONTWRITEBYTECODE= .venv/bin/python -c "import sys, torch, torchvision, natten; import compat.basicsr_torchvision, basicsr; print('install ok: torch', torch.__version__, '| torchvision', torchvision.__version__, '| natten', natten.__version__, '| cuda' if torch.cuda.is_available() else '| cpu', '| installed with', sys.argv[1])" "$installer")
installer=${PMRF_INSTALLER:-auto}  # the stamp's digest is of the request, not of the installer that ran
printf '%s\n%s\n' "$(state)" "$check" >"$STAMP"
echo "$check"
