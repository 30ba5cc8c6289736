//! The service template: the files the scaffolder commits to a new project's repository so that
//! every push to `main` builds the app's Docker image and deploys it to the project's server.
//!
//! Why it looks the way it does: project (L2) secrets must reach the app without the orchestrator
//! ever holding their values, so the only input here is *names*. A [`SecretVar`] maps a GitHub
//! Actions secret to the environment variable the app reads; the rendered workflow takes the value
//! from `${{ secrets.NAME }}` at run time and moves it to the server in a 0600 env file that the
//! container gets with `--env-file`: never on a command line, never in a log. The server
//! connection (`DEPLOY_HOST`, `DEPLOY_USER`, `DEPLOY_SSH_KEY`, and `DEPLOY_KNOWN_HOSTS` pinning the
//! host key, so no `ssh-keyscan`) is a fixed set of secrets that the orchestrator sets when it
//! provisions the server; the app's secrets may not use those names.
//!
//! Two flavours ([`Template`]): plain SSH (`docker save | ssh docker load`, then `docker run`),
//! and Ansible (a playbook run with `-e @vars.json`) for projects that want one.
//!
//! The templates are files under `templates/`, embedded at compile time and rendered with
//! MiniJinja. Its delimiters are changed to `[[ ]]`, `[% %]` and `[# #]` so that GitHub's
//! `${{ ... }}`, Ansible's `{{ ... }}` and Docker's `{{.Field}}` pass through literally; a
//! template therefore must not contain `[[` for anything else (bash's `[[ ]]` included). Values
//! are inserted without escaping, which is sound only because [`render`] checks every input
//! against a strict alphabet first (see `validate`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};

mod validate;

/// The version of `ansible-core` the Ansible workflow installs on the runner. The same version is
/// pinned in `tools/lint/requirements.txt` for the syntax check (a test keeps the two equal).
pub const ANSIBLE_CORE_VERSION: &str = "2.19.14";

/// Which deploy mechanism the rendered workflow uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// Docker image shipped over SSH (`docker save | ssh docker load`), container run over SSH.
    DockerSsh,
    /// The same workflow shape, with the server-side work done by an Ansible playbook.
    Ansible,
}

impl Template {
    /// Every template, for listings and help texts.
    pub const ALL: [Template; 2] = [Template::DockerSsh, Template::Ansible];

    /// The name used in requests and configuration: `docker-ssh` or `ansible`.
    pub fn as_str(self) -> &'static str {
        match self {
            Template::DockerSsh => "docker-ssh",
            Template::Ansible => "ansible",
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A template name that is not one of [`Template::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown template (known: docker-ssh, ansible)")]
pub struct UnknownTemplate;

impl FromStr for Template {
    type Err = UnknownTemplate;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or(UnknownTemplate)
    }
}

/// One app secret, by name only: there is deliberately no field for a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVar {
    /// The GitHub Actions secret that holds the value, e.g. `TELEGRAM_TOKEN`.
    pub secret: String,
    /// The environment variable the app reads it from, e.g. `BOT_TOKEN`.
    pub env: String,
}

/// What a template is rendered from.
#[derive(Debug, Clone, Copy)]
pub struct ProjectVars<'a> {
    /// The repository's name (GitHub's rules: `A-Z a-z 0-9 . _ -`, at most 100).
    pub name: &'a str,
    /// The app's secrets. Names must match `[A-Z_][A-Z0-9_]*`, each secret and each env name at
    /// most once, and no secret may be called `DEPLOY_*` (the template's own) or `GITHUB_*`.
    /// Each is also offered to the image build as a BuildKit secret (never a build argument).
    pub secrets: &'a [SecretVar],
    /// The GitHub environment the deploy job runs in ([`DEFAULT_ENVIRONMENT`] unless the project
    /// asks for another): its protection rules (required reviewers, deployment branches) gate
    /// the deploy, and its environment secrets override repository secrets of the same name.
    /// Repository secrets stay visible inside an environment job, so a project whose secrets
    /// are all repository secrets deploys the same. 1 to 255 of `A-Z a-z 0-9 . _ -`.
    pub environment: &'a str,
}

/// The environment the deploy job runs in unless a project names another.
pub const DEFAULT_ENVIRONMENT: &str = "production";

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Path relative to the repository root, `/`-separated.
    pub path: String,
    pub content: Vec<u8>,
}

/// Which name of a [`SecretVar`] an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretField {
    Secret,
    Env,
}

impl fmt::Display for SecretField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretField::Secret => "secret",
            SecretField::Env => "env",
        })
    }
}

/// Why a template could not be rendered. All but [`RenderError::Engine`] are the caller's input
/// (INVALID_ARGUMENT, with [`RenderError::field`] as the field violation's path). Messages never
/// repeat a name that failed validation: it could be a secret value in the wrong field.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("name: {0}")]
    InvalidProjectName(&'static str),
    #[error("environment: {0}")]
    InvalidEnvironment(&'static str),
    #[error(
        "secrets[{index}].{field}: must match [A-Z_][A-Z0-9_]* (upper-case letters, digits and \
         underscores, not starting with a digit)"
    )]
    InvalidName { index: usize, field: SecretField },
    #[error("secrets[{index}].secret: {name} is reserved: {reason}")]
    ReservedSecret {
        index: usize,
        name: String,
        reason: &'static str,
    },
    #[error("secrets[{index}].{field}: {name} is given more than once")]
    Duplicate {
        index: usize,
        field: SecretField,
        name: String,
    },
    /// A defect in a template (the inputs were valid): INTERNAL.
    #[error("template {template}: {message}")]
    Engine {
        template: &'static str,
        message: String,
    },
}

impl RenderError {
    /// The request field at fault, as a field-violation path (`name`, `secrets[2].env`), or
    /// `None` for [`RenderError::Engine`].
    pub fn field(&self) -> Option<String> {
        match self {
            RenderError::InvalidProjectName(_) => Some("name".to_owned()),
            RenderError::InvalidEnvironment(_) => Some("environment".to_owned()),
            RenderError::InvalidName { index, field }
            | RenderError::Duplicate { index, field, .. } => {
                Some(format!("secrets[{index}].{field}"))
            }
            RenderError::ReservedSecret { index, .. } => Some(format!("secrets[{index}].secret")),
            RenderError::Engine { .. } => None,
        }
    }
}

/// Template sources, embedded at compile time. Includes refer to these names.
const SOURCES: &[(&str, &str)] = &[
    (
        "docker-ssh/deploy.yml",
        include_str!("../templates/docker-ssh/deploy.yml"),
    ),
    (
        "docker-ssh/env-file.yml",
        include_str!("../templates/docker-ssh/env-file.yml"),
    ),
    (
        "ansible/deploy.yml",
        include_str!("../templates/ansible/deploy.yml"),
    ),
    (
        "ansible/playbook.yml",
        include_str!("../templates/ansible/playbook.yml"),
    ),
    (
        "common/check-config.yml",
        include_str!("../templates/common/check-config.yml"),
    ),
    (
        "common/ssh-setup.yml",
        include_str!("../templates/common/ssh-setup.yml"),
    ),
    (
        "common/build.yml",
        include_str!("../templates/common/build.yml"),
    ),
    (
        "common/cleanup.yml",
        include_str!("../templates/common/cleanup.yml"),
    ),
    (
        "common/DEPLOY.md",
        include_str!("../templates/common/DEPLOY.md"),
    ),
];

/// (output path, template name) for each file a template produces.
fn outputs(template: Template) -> &'static [(&'static str, &'static str)] {
    match template {
        Template::DockerSsh => &[
            (".github/workflows/deploy.yml", "docker-ssh/deploy.yml"),
            ("DEPLOY.md", "common/DEPLOY.md"),
        ],
        Template::Ansible => &[
            (".github/workflows/deploy.yml", "ansible/deploy.yml"),
            ("deploy/playbook.yml", "ansible/playbook.yml"),
            ("DEPLOY.md", "common/DEPLOY.md"),
        ],
    }
}

/// Renders `template` for a project: checks `vars` first (nothing is rendered from bad input),
/// then returns the files to commit, in a fixed order.
pub fn render(template: Template, vars: &ProjectVars<'_>) -> Result<Vec<File>, RenderError> {
    validate::check(vars)?;
    let engine_error = |name: &'static str| {
        move |e: minijinja::Error| RenderError::Engine {
            template: name,
            message: format!("{e:#}"),
        }
    };
    // Parsed once for the process: every render shares the compiled templates.
    static ENV: std::sync::LazyLock<Result<Environment<'static>, minijinja::Error>> =
        std::sync::LazyLock::new(environment);
    let env = ENV.as_ref().map_err(|e| RenderError::Engine {
        template: template.as_str(),
        message: format!("{e:#}"),
    })?;
    let ctx = context(template, vars);
    outputs(template)
        .iter()
        .map(|&(path, name)| {
            let content = env
                .get_template(name)
                .and_then(|t| t.render(&ctx))
                .map_err(engine_error(name))?;
            Ok(File {
                path: path.to_owned(),
                content: content.into_bytes(),
            })
        })
        .collect()
}

fn environment() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .block_delimiters("[%", "%]")
            .variable_delimiters("[[", "]]")
            .comment_delimiters("[#", "#]")
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()?,
    );
    // A misspelt variable is a template bug, not an empty string in a deploy script.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // YAML, Markdown: no HTML escaping (inputs are validated identifiers anyway).
    env.set_auto_escape_callback(|_| AutoEscape::None);
    for &(name, source) in SOURCES {
        env.add_template(name, source)?;
    }
    Ok(env)
}

fn context(template: Template, vars: &ProjectVars<'_>) -> Value {
    let secrets: Vec<Value> = vars
        .secrets
        .iter()
        .map(|s| {
            Value::from(BTreeMap::from([
                ("secret", Value::from(s.secret.as_str())),
                ("env", Value::from(s.env.as_str())),
            ]))
        })
        .collect();
    Value::from(BTreeMap::from([
        ("template", Value::from(template.as_str())),
        ("project", Value::from(vars.name)),
        ("environment", Value::from(vars.environment)),
        ("app", Value::from(validate::app_slug(vars.name))),
        ("secrets", Value::from(secrets)),
        ("ansible_core_version", Value::from(ANSIBLE_CORE_VERSION)),
    ]))
}

#[cfg(test)]
mod tests;
