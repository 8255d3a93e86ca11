# Shared by scripts/demo, scripts/test and scripts/examples: find Python, install the system
# packages a command needs (as root) or say exactly how, and create or reuse a virtualenv.
# Sourced, not run. Works on a bare Debian/Ubuntu with only python3 (no make, no venv module).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

find_python() {
  local candidate
  for candidate in "${EDGE_SDK_PYTHON:-}" python3 python3.13 python3.12 python3.11 python3.10; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      PYTHON="$(command -v "$candidate")"
      return 0
    fi
  done
  die "Python >= 3.10 not found (JetPack 6 and Debian 12 ship it; set EDGE_SDK_PYTHON=/path/to/python3)"
}

# Debian packages that must be present: installed when root, otherwise the exact line to run.
require_debian_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    die "missing system packages: ${missing[*]} (install them with your package manager)"
  fi
  if [[ "$(id -u)" == 0 ]]; then
    say "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    printf 'These system packages are needed. Install them, then run this command again:\n\n' >&2
    printf '    sudo apt-get update && sudo apt-get install -y --no-install-recommends %s\n\n' "${missing[*]}" >&2
    exit 1
  fi
}

# Debian ships venv/ensurepip separately, as python3.X-venv for each python3.X.
ensure_venv_module() {
  if "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    return 0
  fi
  command -v dpkg-query >/dev/null 2>&1 || die "$PYTHON has no venv/ensurepip module"
  local minor
  minor="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  require_debian_packages "python${minor}-venv"
}

# make_venv DIR EXTRAS: create DIR if needed and install the project with EXTRAS (e.g. "dev");
# a stamp of pyproject.toml skips the install when nothing changed since the last run.
make_venv() {
  local dir="$1" extras="$2" stamp want
  find_python
  ensure_venv_module
  if [[ ! -x "$dir/bin/python" ]]; then
    say "creating virtualenv $dir"
    "$PYTHON" -m venv "$dir" || die "could not create the virtualenv $dir"
  fi
  stamp="$dir/.edge-sdk-installed"
  want="$(cat pyproject.toml; echo "extras=$extras")"
  want="$(printf '%s' "$want" | "$dir/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  say "installing edge-sdk${extras:+[$extras]} into $dir (a few minutes the first time)"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
  printf '%s\n' "$want" >"$stamp"
}
