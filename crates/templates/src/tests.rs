//! Properties of the rendered files that linters cannot see: where secrets may appear, how the
//! host key and the env file are handled, and what input is refused. The linters themselves run
//! in `tests/lint.rs`.

use super::*;

fn var(secret: &str, env: &str) -> SecretVar {
    SecretVar {
        secret: secret.to_owned(),
        env: env.to_owned(),
    }
}

fn sample() -> Vec<SecretVar> {
    vec![
        var("TELEGRAM_TOKEN", "BOT_TOKEN"),
        var("APP_SSH_PRIVATE_KEY", "SSH_PRIVATE_KEY"),
        var("STRIPE_KEY", "STRIPE_API_KEY"),
    ]
}

fn render_ok(template: Template, secrets: &[SecretVar]) -> Vec<File> {
    render(
        template,
        &ProjectVars {
            name: "Telegram.Bot_2",
            secrets,
            environment: DEFAULT_ENVIRONMENT,
        },
    )
    .expect("renders")
}

fn text<'a>(files: &'a [File], path: &str) -> &'a str {
    let file = files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no {path}"));
    std::str::from_utf8(&file.content).expect("utf-8")
}

const WORKFLOW: &str = ".github/workflows/deploy.yml";

/// Lines of the workflow's scripts (`run:` values, inline or block), with their line numbers.
fn script_lines(workflow: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut block_indent: Option<usize> = None;
    for (n, line) in workflow.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        if let Some(key_indent) = block_indent {
            if line.trim().is_empty() || indent > key_indent {
                out.push((n + 1, line));
                continue;
            }
            block_indent = None;
        }
        let key = line.trim_start().trim_start_matches("- ");
        if let Some(rest) = key.strip_prefix("run:") {
            let rest = rest.trim();
            if rest.starts_with('|') || rest.starts_with('>') {
                block_indent = Some(line.len() - key.len());
            } else {
                out.push((n + 1, line));
            }
        }
    }
    out
}

#[test]
fn every_secret_is_read_as_a_secrets_expression() {
    for template in Template::ALL {
        let files = render_ok(template, &sample());
        let workflow = text(&files, WORKFLOW);
        for s in sample() {
            let expr = format!("${{{{ secrets.{} }}}}", s.secret);
            assert!(workflow.contains(&expr), "{template}: {expr} missing");
        }
        for name in [
            "DEPLOY_HOST",
            "DEPLOY_USER",
            "DEPLOY_SSH_KEY",
            "DEPLOY_KNOWN_HOSTS",
        ] {
            assert!(
                workflow.contains(&format!("${{{{ secrets.{name} }}}}")),
                "{template}: {name}"
            );
        }
    }
}

#[test]
fn secrets_are_only_in_env_mappings_and_no_expression_is_in_a_script() {
    for template in Template::ALL {
        let files = render_ok(template, &sample());
        let workflow = text(&files, WORKFLOW);
        let scripts = script_lines(workflow);
        assert!(
            scripts.len() > 50,
            "{template}: found only {} script lines",
            scripts.len()
        );
        for (n, line) in &scripts {
            assert!(
                !line.contains("${{"),
                "{template}:{n}: expression inside a script: {line}"
            );
        }
        for (n, line) in workflow.lines().enumerate() {
            if line.trim_start().starts_with('#') || !line.contains("secrets.") {
                continue;
            }
            // `        NAME: ${{ secrets.SECRET }}` and nothing else.
            let (key, value) = line.trim().split_once(": ").expect("a mapping line");
            assert!(validate::is_identifier(key), "{template}:{}: {line}", n + 1);
            let secret = value
                .strip_prefix("${{ secrets.")
                .and_then(|v| v.strip_suffix(" }}"))
                .unwrap_or_else(|| panic!("{template}:{}: {line}", n + 1));
            assert!(
                validate::is_identifier(secret),
                "{template}:{}: {line}",
                n + 1
            );
        }
    }
}

#[test]
fn the_api_takes_no_secret_values() {
    // Exhaustive patterns: adding a field (say, a value) to either struct breaks this test.
    let SecretVar { secret: _, env: _ } = var("A", "B");
    let ProjectVars {
        name: _,
        secrets: _,
        environment: _,
    } = ProjectVars {
        name: "x",
        secrets: &[],
        environment: DEFAULT_ENVIRONMENT,
    };

    // A value pasted into a name field is refused, and the error does not repeat it.
    let canary = "7391524680:AAE-canary-Qx9_zT";
    for secrets in [
        vec![var(canary, "BOT_TOKEN")],
        vec![var("TELEGRAM_TOKEN", canary)],
    ] {
        let err = render(
            Template::DockerSsh,
            &ProjectVars {
                name: "bot",
                secrets: &secrets,
                environment: DEFAULT_ENVIRONMENT,
            },
        )
        .expect_err("a value is not a name");
        assert!(!format!("{err} {err:?}").contains(canary), "{err:?}");
    }
    let err = render(
        Template::Ansible,
        &ProjectVars {
            name: canary,
            secrets: &[],
            environment: DEFAULT_ENVIRONMENT,
        },
    )
    .expect_err("not a repository name");
    assert!(!format!("{err} {err:?}").contains(canary), "{err:?}");
    // In an expression, a secret's name appears only as GitHub's `${{ secrets.NAME }}`; elsewhere
    // it is a plain label (to name a missing secret in an error), never evaluated.
    let name = "CANARYVALUE8F3A";
    let reference = format!("${{{{ secrets.{name} }}}}");
    for template in Template::ALL {
        let files = render_ok(template, &[var(name, "CANARY_ENV")]);
        let mut referenced = 0;
        for f in files.iter().filter(|f| !f.path.ends_with(".md")) {
            for line in String::from_utf8_lossy(&f.content).lines() {
                if line.contains(name) {
                    assert!(
                        line.contains(&reference) || !line.contains("${{"),
                        "{}: {line}",
                        f.path
                    );
                    referenced += usize::from(line.contains(&reference));
                }
            }
        }
        assert!(referenced > 0, "{template:?} never references the secret");
    }
}

#[test]
fn host_key_is_pinned_and_never_scanned() {
    for template in Template::ALL {
        let files = render_ok(template, &sample());
        for f in &files {
            let content = String::from_utf8_lossy(&f.content);
            assert!(!content.contains("keyscan"), "{template} {}", f.path);
            assert!(
                !content.contains("StrictHostKeyChecking no"),
                "{template} {}",
                f.path
            );
            assert!(
                !content.contains("StrictHostKeyChecking=no"),
                "{template} {}",
                f.path
            );
        }
        let workflow = text(&files, WORKFLOW);
        for needle in [
            "printf '%s\\n' \"$DEPLOY_KNOWN_HOSTS\"",
            "UserKnownHostsFile \"$dir/known_hosts\"",
            "GlobalKnownHostsFile /dev/null",
            "StrictHostKeyChecking yes",
            "umask 077",
            "chmod 600 \"$dir/id_deploy\"",
        ] {
            assert!(workflow.contains(needle), "{template}: {needle}");
        }
    }
}

#[test]
fn docker_ssh_ships_secrets_in_a_0600_env_file() {
    let files = render_ok(Template::DockerSsh, &sample());
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, [WORKFLOW, "DEPLOY.md"]);
    let workflow = text(&files, WORKFLOW);
    for needle in [
        "--env-file \"$env_file\"",
        "docker save \"$IMAGE_REF\" | gzip | remote docker load",
        "ssh -F \"$SSH_CONFIG\" -- \"$target\"",
        "target=\"$DEPLOY_USER@$DEPLOY_HOST\"",
        "umask 077 && mkdir -p apps/$APP_NAME && cat > apps/$APP_NAME/app.env.new && chmod 600",
        "< \"$ENV_FILE\"",
        "echo \"::add-mask::$value\"",
        "add BOT_TOKEN TELEGRAM_TOKEN\n",
        "APP_SECRET_BOT_TOKEN: ${{ secrets.TELEGRAM_TOKEN }}\n",
        "permissions:\n  contents: read\n",
        "concurrency:\n  group: deploy-",
        "branches: [main]",
        "workflow_dispatch:",
        "docker build --pull --file Dockerfile",
        "APP_NAME: \"telegram-bot-2\"",
    ] {
        assert!(workflow.contains(needle), "missing {needle:?}");
    }
    // No value on a command line: `docker run -e NAME=...` or `--env NAME=`.
    assert!(!workflow.contains("docker run -e") && !workflow.contains("--env "));
}

#[test]
fn ansible_passes_variables_in_a_file_only() {
    let files = render_ok(Template::Ansible, &sample());
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, [WORKFLOW, "deploy/playbook.yml", "DEPLOY.md"]);
    let workflow = text(&files, WORKFLOW);
    let run = workflow
        .lines()
        .find(|l| l.contains("ansible-playbook"))
        .expect("a step runs ansible-playbook");
    assert_eq!(
        run.trim(),
        "run: ansible-playbook -i \"$DEPLOY_DIR/inventory.yml\" deploy/playbook.yml -e \"@$DEPLOY_DIR/vars.json\""
    );
    assert!(!workflow.contains("--extra-vars"));
    for needle in [
        "pipx install \"ansible-core==$ANSIBLE_CORE_VERSION\"",
        &format!("ANSIBLE_CORE_VERSION: \"{ANSIBLE_CORE_VERSION}\""),
        "os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600",
        "(\"SSH_PRIVATE_KEY\", \"APP_SSH_PRIVATE_KEY\"),",
        "APP_SECRET_SSH_PRIVATE_KEY: ${{ secrets.APP_SSH_PRIVATE_KEY }}",
        "print(f\"::add-mask::{encoded}\")",
        "umask 077",
    ] {
        assert!(workflow.contains(needle), "missing {needle:?}");
    }

    let playbook = text(&files, "deploy/playbook.yml");
    let env_task = playbook
        .split("\n\n")
        .find(|task| task.contains("name: Write the env file"))
        .expect("env file task");
    for needle in [
        "dest: \"{{ app_dir }}/app.env\"",
        "mode: \"0600\"",
        "no_log: true",
        "diff: false",
    ] {
        assert!(
            env_task.contains(needle),
            "env file task: missing {needle:?}"
        );
    }
    assert!(playbook.contains("- --env-file\n          - \"{{ app_dir }}/app.env\""));
    assert!(!playbook.contains("shell:"), "commands run without a shell");
}

#[test]
fn the_workflow_pins_the_ansible_core_the_lint_uses() {
    let requirements = include_str!("../../../tools/lint/requirements.txt");
    assert!(
        requirements
            .lines()
            .any(|l| l.trim() == format!("ansible-core=={ANSIBLE_CORE_VERSION}")),
        "tools/lint/requirements.txt must pin ansible-core=={ANSIBLE_CORE_VERSION}"
    );
}

#[test]
fn output_is_complete_and_deterministic() {
    for template in Template::ALL {
        for secrets in [sample(), Vec::new()] {
            let files = render_ok(template, &secrets);
            assert_eq!(files, render_ok(template, &secrets));
            for f in &files {
                let content = std::str::from_utf8(&f.content).expect("utf-8");
                assert!(content.ends_with('\n'), "{}", f.path);
                for leftover in ["[[", "]]", "[%", "%]", "[#", "#]"] {
                    assert!(
                        !content.contains(leftover),
                        "{template} {}: {leftover}",
                        f.path
                    );
                }
            }
            let md = text(&files, "DEPLOY.md");
            assert!(md.contains("# Deploying Telegram.Bot_2"));
            for s in &secrets {
                assert!(
                    md.contains(&format!("| `{}` | `{}` |", s.secret, s.env)),
                    "{md}"
                );
            }
        }
    }
}

#[test]
fn invalid_names_are_refused() {
    let cases: &[(&[SecretVar], &str)] = &[
        (&[var("telegram_token", "BOT_TOKEN")], "secrets[0].secret"),
        (&[var("TELEGRAM-TOKEN", "BOT_TOKEN")], "secrets[0].secret"),
        (&[var("1TOKEN", "BOT_TOKEN")], "secrets[0].secret"),
        (&[var("", "BOT_TOKEN")], "secrets[0].secret"),
        (
            &[var("X }}\n  run: curl evil", "BOT_TOKEN")],
            "secrets[0].secret",
        ),
        (
            &[var("A", "B"), var("TOKEN", "BOT TOKEN")],
            "secrets[1].env",
        ),
        (&[var("TOKEN", "BOT_TOKEN=x")], "secrets[0].env"),
        (&[var("TOKEN", "$(id)")], "secrets[0].env"),
        (&[var("TOKEN", "")], "secrets[0].env"),
    ];
    for (secrets, field) in cases {
        for template in Template::ALL {
            let err = render(
                template,
                &ProjectVars {
                    name: "bot",
                    secrets,
                    environment: DEFAULT_ENVIRONMENT,
                },
            )
            .expect_err("invalid name accepted");
            assert!(matches!(err, RenderError::InvalidName { .. }), "{err:?}");
            assert_eq!(err.field().as_deref(), Some(*field), "{err}");
        }
    }
    for name in [
        "",
        ".",
        "..",
        "my bot",
        "bot\n",
        "a/b",
        "bot.git",
        "ünï",
        &"x".repeat(101),
    ] {
        let err = render(
            Template::DockerSsh,
            &ProjectVars {
                name,
                secrets: &[],
                environment: DEFAULT_ENVIRONMENT,
            },
        )
        .expect_err("invalid project name accepted");
        assert!(matches!(err, RenderError::InvalidProjectName(_)), "{err:?}");
        assert_eq!(err.field().as_deref(), Some("name"));
    }
}

#[test]
fn reserved_and_duplicate_names_are_refused() {
    for secret in [
        "DEPLOY_SSH_KEY",
        "DEPLOY_HOST",
        "DEPLOY_ANYTHING",
        "GITHUB_TOKEN",
    ] {
        let secrets = [var("OK", "OK"), var(secret, "WHATEVER")];
        for template in Template::ALL {
            let err = render(
                template,
                &ProjectVars {
                    name: "bot",
                    secrets: &secrets,
                    environment: DEFAULT_ENVIRONMENT,
                },
            )
            .expect_err("reserved name accepted");
            assert!(
                matches!(err, RenderError::ReservedSecret { index: 1, .. }),
                "{err:?}"
            );
            assert_eq!(err.field().as_deref(), Some("secrets[1].secret"));
        }
    }
    // The app itself may read a variable called DEPLOY_*: only the secret names are reserved.
    render_ok(Template::DockerSsh, &[var("APP_DEPLOY", "DEPLOY_MODE")]);

    let err = render(
        Template::DockerSsh,
        &ProjectVars {
            name: "bot",
            secrets: &[var("A", "X"), var("A", "Y")],
            environment: DEFAULT_ENVIRONMENT,
        },
    )
    .expect_err("duplicate secret");
    assert!(matches!(
        err,
        RenderError::Duplicate {
            index: 1,
            field: SecretField::Secret,
            ..
        }
    ));
    let err = render(
        Template::Ansible,
        &ProjectVars {
            name: "bot",
            secrets: &[var("A", "X"), var("B", "X")],
            environment: DEFAULT_ENVIRONMENT,
        },
    )
    .expect_err("duplicate env");
    assert!(matches!(
        err,
        RenderError::Duplicate {
            index: 1,
            field: SecretField::Env,
            ..
        }
    ));
    assert_eq!(err.to_string(), "secrets[1].env: X is given more than once");
}

#[test]
fn template_names_round_trip() {
    for template in Template::ALL {
        assert_eq!(template.as_str().parse::<Template>(), Ok(template));
        assert_eq!(template.to_string(), template.as_str());
    }
    assert_eq!("kubernetes".parse::<Template>(), Err(UnknownTemplate));
    assert_eq!("Ansible".parse::<Template>(), Err(UnknownTemplate));
}

#[test]
fn the_deploy_job_runs_in_the_named_environment() {
    for template in Template::ALL {
        let files = render_ok(template, &sample());
        let workflow = text(&files, WORKFLOW);
        assert!(
            workflow.contains("    timeout-minutes: 30\n")
                && workflow.contains("\n    environment: \"production\"\n"),
            "{template}"
        );
        let staging = render(
            template,
            &ProjectVars {
                name: "bot",
                secrets: &sample(),
                environment: "staging-eu",
            },
        )
        .expect("renders");
        assert!(text(&staging, WORKFLOW).contains("\n    environment: \"staging-eu\"\n"));
        assert!(text(&staging, "DEPLOY.md").contains("environment `staging-eu`"));
        for bad in ["", "prod\n  runs-on: evil", "\"x\"", "-x"] {
            let err = render(
                template,
                &ProjectVars {
                    name: "bot",
                    secrets: &[],
                    environment: bad,
                },
            )
            .expect_err("a bad environment name");
            assert!(matches!(err, RenderError::InvalidEnvironment(_)), "{err:?}");
            assert_eq!(err.field().as_deref(), Some("environment"));
        }
    }
}

#[test]
fn the_image_is_built_with_buildkit_secrets_never_build_arguments() {
    for template in Template::ALL {
        for secrets in [sample(), Vec::new()] {
            let files = render_ok(template, &secrets);
            // DEPLOY.md warns against them; no file that runs uses one.
            for f in files.iter().filter(|f| !f.path.ends_with(".md")) {
                let content = String::from_utf8_lossy(&f.content);
                assert!(!content.contains("--build-arg"), "{template} {}", f.path);
            }
            let workflow = text(&files, WORKFLOW);
            let build = workflow
                .split("\n\n")
                .find(|s| s.contains("- name: Build the image"))
                .expect("a build step");
            assert!(build.contains("DOCKER_BUILDKIT: \"1\""), "{build}");
            for s in &secrets {
                assert!(
                    build.contains(&format!(
                        "APP_SECRET_{}: ${{{{ secrets.{} }}}}",
                        s.env, s.secret
                    )),
                    "{build}"
                );
            }
            if secrets.is_empty() {
                assert!(!build.contains("build_secrets"), "{build}");
            } else {
                assert!(
                    build.contains("for name in BOT_TOKEN SSH_PRIVATE_KEY STRIPE_API_KEY; do"),
                    "{build}"
                );
                assert!(build.contains("--secret \"id=$name,env=$var\""), "{build}");
            }
        }
        let md = text(&render_ok(template, &sample()), "DEPLOY.md").to_owned();
        assert!(md.contains("RUN --mount=type=secret,id="), "{md}");
    }
}
