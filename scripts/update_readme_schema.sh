#!/usr/bin/env bash
# Regenerates the README's recipe reference from the schema (agate train --print-schema).
# tests/e2e/readme_schema.sh fails when the README is out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
AGATE=${AGATE:-build/agate}
table=$("$AGATE" train --print-schema)
python3 - "$table" <<'PY'
import re, sys
table = sys.argv[1].strip()
text = open("README.md").read()
new, n = re.subn(r"(<!-- recipe-schema:begin -->\n).*?(<!-- recipe-schema:end -->)",
                 lambda m: m.group(1) + table + "\n" + m.group(2), text, flags=re.S)
if n != 1:
    sys.exit("README.md has no recipe-schema markers")
open("README.md", "w").write(new)
PY
echo "README recipe reference updated"
