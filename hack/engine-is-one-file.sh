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

echo "== removing the ${engine} engine: the whole change under src/"
echo "deleted: $file ($(wc -l <"$file") lines)"
diff -u --label a/src/engine/mod.rs --label b/src/engine/mod.rs src/engine/mod.rs "$work/src/engine/mod.rs" || true
others="$( (diff -rq src "$work/src" || true) | grep -v -e "^Only in src/engine: ${engine}.rs\$" -e " src/engine/mod.rs and " || true)"
if [[ -n "$others" ]]; then
    echo "FAIL: removing the engine changed more than $file and its registration:" >&2
    echo "$others" >&2
    exit 1
fi
echo "nothing else under src/ changed"
echo
echo "== what is left builds"
# The same target directory, so dependencies are not built again; another version and binary
# name, so the copy's artifacts never replace the tree's own (cargo does not hash a path
# package's location).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
bin="affinity-assistant-without-${engine}"
sed -i -e "0,/^version = \"\(.*\)\"/s//version = \"\1-without-${engine}\"/" \
    -e "s/^name = \"affinity-assistant\"$/name = \"${bin}\"/" \
    -e "s/^default-run = .*/default-run = \"${bin}\"/" "$work/Cargo.toml"
(cd "$work" && cargo build --quiet --offline --bin "$bin")
manifests="$(cd "$work" && cargo run --quiet --offline --bin "$bin" -- manifests)"
if [[ -n "$group" ]] && grep -q -- "$group" <<<"$manifests"; then
    echo "FAIL: the manifests still name ${group}" >&2
    exit 1
fi
echo "ok: without ${file} the add-on builds, and its manifests name no ${group:-${engine}} resource"
echo "    (with it: $(cargo run --quiet --offline -- manifests | grep -c -- "${group:-$engine}") lines)"
