#!/usr/bin/env bash
# Shows that an engine adapter is one file: copies the working tree, removes the engine's file
# (src/engine/<engine>.rs) and its registration (`pub mod <engine>;` and its entry in
# `engines()`), prints the diff under src/, and checks that what is left builds and knows
# nothing of the engine (`manifests` grants no access to its resources and has no webhook entry
# for it). Adding the engine is that diff the other way round: nothing else under src/.
#
# Usage: hack/engine-is-one-file.sh [engine]     (default: argo)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
engine="${1:-argo}"
file="src/engine/${engine}.rs"
[[ -f "$file" ]] || { echo "no engine file $file" >&2; exit 2; }
type="$(sed -n "s/.*&${engine}::\([A-Za-z0-9_]*\).*/\1/p" src/engine/mod.rs | head -n 1)"
[[ -n "$type" ]] || { echo "$engine is not registered in src/engine/mod.rs engines()" >&2; exit 2; }
group="$(sed -n 's/.*Kind *{ *group: *"\([^"]*\)".*/\1/p' "$file" | head -n 1)"

work="$(mktemp -d "${TMPDIR:-/tmp}/engine-one-file.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# The working tree as git sees it (tracked and new files), without build output.
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work"

rm "$work/$file"
sed -i -e "/^pub mod ${engine};$/d" \
    -e "s/, *&${engine}::${type}//; s/&${engine}::${type}, *//" "$work/src/engine/mod.rs"

echo "== removing the ${engine} engine: the whole diff under src/"
diff -ruN src "$work/src" | sed -n '1,400p' | grep -v '^-' || true
changed="$(diff -ruN src "$work/src" | grep '^diff ' | awk '{print $NF}' | sed "s|$work/||")"
echo
echo "files changed: $(echo "$changed" | tr '\n' ' ')"
outside="$(diff -ru src "$work/src" 2>/dev/null | grep -E '^[-+][^-+]' | wc -l || true)"
echo "lines changed outside $file: ${outside}"
if [[ "$(echo "$changed" | grep -vc -e "^$file\$" -e '^src/engine/mod.rs$')" != 0 ]]; then
    echo "FAIL: removing the engine touched files other than $file and its registration" >&2
    exit 1
fi

echo
echo "== what is left builds"
# The same target directory: dependencies are not built again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
(cd "$work" && cargo build --quiet --offline --bin affinity-assistant)
manifests="$(cd "$work" && cargo run --quiet --offline -- manifests)"
if [[ -n "$group" ]] && grep -q -- "$group" <<<"$manifests"; then
    echo "FAIL: the manifests still name ${group}" >&2
    exit 1
fi
echo "ok: without ${file} the add-on builds, and its manifests name no ${group:-${engine}} resource"
echo "    (with it: $(cargo run --quiet --offline -- manifests | grep -c -- "${group:-$engine}") lines)"
