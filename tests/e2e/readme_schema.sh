#!/usr/bin/env bash
# The README's recipe reference must be exactly what the schema prints (no drift).
set -uo pipefail
AGATE=$1; SRC=$2
want=$("$AGATE" train --print-schema)
got=$(sed -n '/<!-- recipe-schema:begin -->/,/<!-- recipe-schema:end -->/p' "$SRC/README.md" | sed '1d;$d')
if [[ "$want" == "$got" ]]; then echo "ok   README recipe reference matches the schema"; exit 0; fi
echo "FAIL README recipe reference is stale: run scripts/update_readme_schema.sh"
diff <(echo "$want") <(echo "$got") | head -20
exit 1
