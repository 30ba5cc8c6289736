//! No rendered workflow passes a secret to `docker build` as a build argument: a build
//! argument's value is kept in the image's history (`docker history --no-trunc`) and build cache,
//! where anyone who can pull the image reads it. Build-time secrets go in as BuildKit secret
//! mounts (`--secret id=...,env=...`) only.
//!
//! The check parses each workflow (PyYAML from the lint venv, as GitHub reads it), works out
//! which environment variables of each step hold a secret (`env:` of the workflow, the job and
//! the step whose value names `secrets.`), and looks at every `--build-arg` in the step's script
//! and at `build-args` of an action. It is shown to catch each way a secret can be slipped in, on
//! workflows mutated from the rendered ones.

mod common;

use std::collections::BTreeSet;

use common::*;
use orchestrator_templates::Template;
use serde_json::Value;

/// Loads a workflow as JSON, with PyYAML.
fn parse(workflow: &str) -> Value {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("deploy.yml");
    std::fs::write(&path, workflow).expect("write");
    let out = run(venv_python()
        .arg("-c")
        .arg("import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1])), default=str))")
        .arg(&path));
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The names in an `env:` mapping whose value refers to a secret.
fn secret_env(env: Option<&Value>) -> BTreeSet<String> {
    env.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_str().is_some_and(|v| v.contains("secrets.")))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Whether `text` expands one of `vars` (`$NAME`, `${NAME}`, `${NAME:-...}`, `${!...}` aside).
fn expands_any(text: &str, vars: &BTreeSet<String>) -> bool {
    vars.iter().any(|v| {
        text.match_indices(&format!("${v}")).any(|(i, m)| {
            let next = text[i + m.len()..].chars().next();
            !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        }) || text.contains(&format!("${{{v}}}"))
            || text.contains(&format!("${{{v}:"))
    })
}

/// The argument after each `--build-arg` (as `--build-arg X` or `--build-arg=X`), up to the next
/// unquoted blank, quotes kept.
fn build_args(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, m) in script.match_indices("--build-arg") {
        let rest = &script[i + m.len()..];
        let rest = rest
            .strip_prefix('=')
            .unwrap_or_else(|| rest.trim_start_matches([' ', '\t', '\\', '\n']));
        let mut arg = String::new();
        let mut quote = None;
        let mut expression = false;
        for c in rest.chars() {
            // A GitHub expression `${{ ... }}` is one word, blanks included.
            if arg.ends_with("${{") {
                expression = true;
            } else if expression && arg.ends_with("}}") {
                expression = false;
            }
            match (quote, c) {
                (None, ' ' | '\t' | '\n' | ';' | '|' | '&') if !expression => break,
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                _ => {}
            }
            arg.push(c);
        }
        out.push(arg);
    }
    out
}

/// Every place a workflow passes a secret as a build argument, as `job/step: what`.
fn secret_build_args(workflow: &Value) -> Vec<String> {
    let mut findings = Vec::new();
    let top = secret_env(workflow.get("env"));
    let jobs = workflow["jobs"].as_object().expect("jobs");
    for (job_name, job) in jobs {
        let job_env = secret_env(job.get("env"));
        for (n, step) in job["steps"].as_array().expect("steps").iter().enumerate() {
            let label = format!(
                "{job_name}/{}",
                step.get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| n.to_string(), str::to_owned)
            );
            let mut secrets: BTreeSet<String> = top.union(&job_env).cloned().collect();
            secrets.extend(secret_env(step.get("env")));
            if let Some(script) = step.get("run").and_then(Value::as_str) {
                for arg in build_args(script) {
                    let unquoted = arg.replace(['"', '\''], "");
                    let (key, value) = match unquoted.split_once('=') {
                        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                        None => (unquoted.clone(), None),
                    };
                    let leaks = match &value {
                        Some(v) => v.contains("secrets.") || expands_any(v, &secrets),
                        // `--build-arg NAME` takes the value of the variable NAME.
                        None => secrets.contains(&key) || expands_any(&key, &secrets),
                    };
                    if leaks {
                        findings.push(format!("{label}: --build-arg {arg}"));
                    }
                }
            }
            // An action's build arguments (docker/build-push-action's `build-args`).
            if let Some(with) = step.get("with").and_then(Value::as_object) {
                for (key, value) in with {
                    let text = value.as_str().unwrap_or_default();
                    if key.contains("build-arg")
                        && (text.contains("secrets.") || expands_any(text, &secrets))
                    {
                        findings.push(format!("{label}: with.{key}"));
                    }
                }
            }
        }
    }
    findings
}

fn rendered_workflows() -> Vec<(String, String)> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut out = Vec::new();
    for template in Template::ALL {
        for (label, secrets) in [("secrets", sample_secrets()), ("none", Vec::new())] {
            let dir = tmp.path().join(format!("{template}-{label}"));
            render_into(&dir, template, "Telegram.Bot_2", &secrets);
            let text = std::fs::read_to_string(dir.join(".github/workflows/deploy.yml"))
                .expect("workflow");
            out.push((format!("{template}-{label}"), text));
        }
    }
    out
}

#[test]
fn no_rendered_workflow_passes_a_secret_as_a_build_argument() {
    for (label, text) in rendered_workflows() {
        let findings = secret_build_args(&parse(&text));
        assert!(findings.is_empty(), "{label}: {findings:#?}");
        // The build does take the secrets, as BuildKit secret mounts.
        if label.ends_with("-secrets") {
            assert!(
                text.contains("build_secrets+=(--secret \"id=$name,env=$var\")")
                    && text.contains("APP_SECRET_BOT_TOKEN: ${{ secrets.TELEGRAM_TOKEN }}")
                    && text.contains("DOCKER_BUILDKIT: \"1\""),
                "{label}: no BuildKit secrets"
            );
        }
    }
}

#[test]
fn the_check_finds_every_way_of_passing_a_secret_as_a_build_argument() {
    let build = "docker build --pull --file Dockerfile \"${build_secrets[@]}\"";
    // Each mutation of the build command, and whether the checker must flag it.
    let mutations: &[(&str, bool)] = &[
        // The value of the step's secret variable, by name (docker reads it from the env).
        ("--build-arg APP_SECRET_BOT_TOKEN", true),
        ("--build-arg=APP_SECRET_BOT_TOKEN", true),
        // Expanded by bash, in the forms a script writes it.
        ("--build-arg \"BOT_TOKEN=$APP_SECRET_BOT_TOKEN\"", true),
        ("--build-arg BOT_TOKEN=${APP_SECRET_BOT_TOKEN}", true),
        ("--build-arg 'X=a'\"${APP_SECRET_X:-}\"", true),
        (
            "--build-arg \\\n            BOT_TOKEN=\"$APP_SECRET_BOT_TOKEN\"",
            true,
        ),
        // A GitHub expression inside the script.
        ("--build-arg T=${{ secrets.TELEGRAM_TOKEN }}", true),
        // Harmless build arguments stay allowed.
        ("--build-arg VERSION=1.2.3", false),
        ("--build-arg \"COMMIT=$GITHUB_SHA\"", false),
        ("--build-arg APP_SECRET_BOT_TOKENS_COUNT=3", false),
    ];
    for (label, text) in rendered_workflows()
        .into_iter()
        .filter(|(l, _)| l.ends_with("-secrets"))
    {
        assert!(text.contains(build), "{label}: the build command changed");
        for (mutation, leaks) in mutations {
            let bad = text.replace(build, &format!("{build} {mutation}"));
            let findings = secret_build_args(&parse(&bad));
            assert_eq!(
                !findings.is_empty(),
                *leaks,
                "{label} with {mutation:?}: {findings:#?}"
            );
        }
        // A secret moved into a job-level env is still a secret.
        let moved = text.replace(
            "    environment: \"production\"\n",
            "    environment: \"production\"\n    env:\n      JOB_TOKEN: ${{ secrets.TELEGRAM_TOKEN }}\n",
        );
        assert_ne!(moved, text, "{label}");
        let bad = moved.replace(build, &format!("{build} --build-arg \"T=$JOB_TOKEN\""));
        assert_eq!(secret_build_args(&parse(&bad)).len(), 1, "{label}");
        assert!(secret_build_args(&parse(&moved)).is_empty(), "{label}");
    }

    // An action's build-args.
    let action = r#"
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - name: Build
        uses: docker/build-push-action@v6
        with:
          build-args: |
            TOKEN=${{ secrets.TELEGRAM_TOKEN }}
"#;
    assert_eq!(
        secret_build_args(&parse(action)),
        ["build/Build: with.build-args"]
    );
}
