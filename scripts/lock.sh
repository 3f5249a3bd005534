#!/usr/bin/env bash
# Refresh requirements/lock.txt, the hashed lock that scripts/setup.sh installs: every runtime,
# extra and dev dependency of pyproject.toml, resolved for Python 3.11 on x86_64 Linux, with the
# CPU build of torch. One line to run after changing a range in pyproject.toml:
#   bash scripts/lock.sh
# uv is pinned here and runs from a throwaway venv, so refreshing needs nothing installed.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.10
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool" && "$tool/bin/pip" install -q "uv==$UV_VERSION"
"$tool/bin/uv" pip compile pyproject.toml --all-extras --generate-hashes --quiet \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --find-links /opt/wheels -c requirements/constraints.txt \
  --custom-compile-command "bash scripts/lock.sh" -o requirements/lock.txt
echo "lock: requirements/lock.txt ($(grep -c '^[a-z]' requirements/lock.txt) packages)"
