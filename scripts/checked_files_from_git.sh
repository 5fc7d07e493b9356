#!/usr/bin/env bash
# Writes the files listed in a sha256 file from one commit of a public git repository, and checks each against the
# sum our numbers came from; the get_*_cases.sh scripts share it.
# Usage: scripts/checked_files_from_git.sh URL REPO COMMIT FOLDER SUMS OUT_DIR
#   REPO: a clone of URL, or "" to clone it into a temporary folder; FOLDER: where the files lie in the repository;
#   SUMS: lines "sha256  path" (paths relative to FOLDER and to OUT_DIR).
set -euo pipefail
url=$1 repo=$2 commit=$3 folder=$4 sums=$5 out=$6
if [ -z "$repo" ]; then
  repo=$(mktemp -d)
  trap 'rm -rf "$repo"' EXIT
  git clone --quiet "$url" "$repo"
fi
mkdir -p "$out"
while read -r _ file; do
  mkdir -p "$out/$(dirname "$file")"
  git -C "$repo" show "$commit:$folder/$file" > "$out/$file"
done < "$sums"
(cd "$out" && sha256sum --check --quiet "$sums") || {
  echo "Some files in $out are not the files our numbers came from (sha256 differs): do not use them." >&2; exit 1; }
