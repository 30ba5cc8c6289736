#!/usr/bin/env bash
# Builds the npm package and installs it where its tests run (scripts/test runs this after
# sdk/generate.sh; crates/e2e/tests/typescript_sdk.rs then runs its node tests against
# `orchctl up`):
#   1. the contracts' version check; package.json's version is sdk/VERSION,
#   2. tsc -> dist/ (ESM + .d.ts), npm pack -> sdk/typescript/orchestrator-mesh-<version>.tgz,
#   3. a consumer folder, ${ORCH_SDK_NPM_CONSUMER:-$HOME/.cache/orchestrator/sdk-npm-consumer},
#      where the tarball is installed with npm like a user would, the examples type-check against
#      its declarations (tsc) and are compiled, and the tests are copied.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sdk="$(dirname "$here")"
consumer="${ORCH_SDK_NPM_CONSUMER:-$HOME/.cache/orchestrator/sdk-npm-consumer}"

[ -d "$here/gen/orchestrator" ] || { echo "error: run sdk/generate.sh first" >&2; exit 1; }
"$sdk/check-version.sh" >/dev/null
version="$(tr -d '[:space:]' <"$sdk/VERSION")"
cd "$here"
[ "$(node -p 'require("./package.json").version')" = "$version" ] ||
  npm pkg set version="$version"
rm -rf dist ./*.tgz
./node_modules/.bin/tsc -p .
tgz="$here/$(npm pack --silent 2>/dev/null | tail -1)"
echo "typescript: packed $(basename "$tgz")"
tar -tzf "$tgz" | grep -q 'package/dist/gen/orchestrator/vault/v1/vault_pb.d.ts' ||
  { echo "error: $tgz lacks the generated code" >&2; exit 1; }

mkdir -p "$consumer"
cd "$consumer"
cat >package.json <<JSON
{ "name": "orchestrator-mesh-consumer", "private": true, "type": "module" }
JSON
# The tarball as a user installs it (its dependencies from the registry), and tsc for the examples.
npm install --no-audit --no-fund --loglevel=error --no-save "$tgz" \
  "typescript@$(node -p "require('$here/package.json').devDependencies.typescript")" \
  "@types/node@$(node -p "require('$here/package.json').devDependencies['@types/node']")"
rm -rf examples tests dist
cp -r "$here/examples" "$here/tests" .
cat >tsconfig.json <<'JSON'
{
  "compilerOptions": {
    "target": "es2022", "module": "nodenext", "moduleResolution": "nodenext", "strict": true,
    "verbatimModuleSyntax": true, "types": ["node"], "outDir": "dist", "rootDir": "."
  },
  "include": ["examples/**/*.ts"]
}
JSON
./node_modules/.bin/tsc -p .
echo "typescript: examples type-check against the installed package (tsc --strict)"
echo "typescript: installed in $consumer (tests: crates/e2e/tests/typescript_sdk.rs, or see sdk/README.md)"
