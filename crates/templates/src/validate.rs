//! Input checks, run before anything is rendered.
//!
//! Rendered names land in YAML keys, in `${{ secrets.NAME }}` expressions, in bash words and in a
//! Python literal, without quoting or escaping. That is safe only because every name is checked
//! against a strict alphabet first: a name that passes cannot close a string, start an
//! expression or inject a command. Error messages never repeat a name that failed the check (it
//! might be a secret value pasted into the wrong field), only names that passed it.

use std::collections::HashSet;

use crate::{ProjectVars, RenderError, SecretField};

/// Secret names the template itself reads: the server connection, set by the orchestrator.
pub(crate) const RESERVED_SECRET_PREFIX: &str = "DEPLOY_";
/// GitHub refuses secret names with this prefix.
const GITHUB_PREFIX: &str = "GITHUB_";

pub(crate) fn check(vars: &ProjectVars<'_>) -> Result<(), RenderError> {
    check_project_name(vars.name)?;
    check_environment(vars.environment)?;
    let mut secrets = HashSet::new();
    let mut envs = HashSet::new();
    for (index, var) in vars.secrets.iter().enumerate() {
        if !is_identifier(&var.secret) {
            return Err(RenderError::InvalidName {
                index,
                field: SecretField::Secret,
            });
        }
        if !is_identifier(&var.env) {
            return Err(RenderError::InvalidName {
                index,
                field: SecretField::Env,
            });
        }
        if var.secret.starts_with(RESERVED_SECRET_PREFIX) {
            return Err(RenderError::ReservedSecret {
                index,
                name: var.secret.clone(),
                reason: "DEPLOY_* secrets hold the server connection and are managed by the \
                         orchestrator, not by the app",
            });
        }
        if var.secret.starts_with(GITHUB_PREFIX) {
            return Err(RenderError::ReservedSecret {
                index,
                name: var.secret.clone(),
                reason: "GitHub does not allow secret names starting with GITHUB_",
            });
        }
        if !secrets.insert(var.secret.as_str()) {
            return Err(RenderError::Duplicate {
                index,
                field: SecretField::Secret,
                name: var.secret.clone(),
            });
        }
        if !envs.insert(var.env.as_str()) {
            return Err(RenderError::Duplicate {
                index,
                field: SecretField::Env,
                name: var.env.clone(),
            });
        }
    }
    Ok(())
}

/// `[A-Z_][A-Z0-9_]*`: a valid GitHub secret name (GitHub folds case; upper case only avoids two
/// spellings of one secret), a POSIX environment variable name, and a plain bash/YAML word.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'A'..=b'Z' | b'_'))
        && bytes.all(|b| matches!(b, b'A'..=b'Z' | b'0'..=b'9' | b'_'))
}

/// GitHub's repository name rules: 1 to 100 of `A-Z a-z 0-9 . _ -`, not `.` or `..`; GitHub
/// rewrites other characters, which would make the repository's name differ from the request.
fn check_project_name(name: &str) -> Result<(), RenderError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > 100 {
        "must be at most 100 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "may contain only letters, digits, '.', '_' and '-'"
    } else if name == "." || name == ".." {
        "must not be '.' or '..'"
    } else if name.to_ascii_lowercase().ends_with(".git") {
        "must not end with '.git'"
    } else {
        return Ok(());
    };
    Err(RenderError::InvalidProjectName(reason))
}

/// GitHub's environment names are up to 255 characters; the name lands unquoted in the job's
/// `environment:`, so only a plain YAML word is taken: `A-Z a-z 0-9 . _ -`, not starting with
/// `-` or `.` (a YAML sequence marker, or a name GitHub may treat as hidden).
fn check_environment(name: &str) -> Result<(), RenderError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > 255 {
        "must be at most 255 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        || name.starts_with(['-', '.'])
    {
        "may contain only letters, digits, '.', '_' and '-', and must start with a letter, digit or '_'"
    } else {
        return Ok(());
    };
    Err(RenderError::InvalidEnvironment(reason))
}

/// The name used for the Docker image, the container and the server directory: lower case
/// (Docker image names are), each run of `.`, `_` and `-` turned into one `-`, so the result
/// matches `[a-z0-9]+(-[a-z0-9]+)*` (also a plain shell word). Only applied to checked names.
pub(crate) fn app_slug(name: &str) -> String {
    let mut slug = String::with_capacity(name.len());
    let mut pending_dash = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if pending_dash && !slug.is_empty() {
                slug.push('-');
            }
            pending_dash = false;
            slug.push(c.to_ascii_lowercase());
        } else {
            pending_dash = true;
        }
    }
    if slug.is_empty() {
        // A name of separators only, e.g. "_-_".
        slug.push_str("app");
    }
    slug
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["A", "_", "BOT_TOKEN", "_X1", "A1_B2"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1A",
            "a",
            "Bot",
            "BOT-TOKEN",
            "BOT TOKEN",
            "BOT\nX",
            "X}}",
            "X$Y",
            "É",
            "X.Y",
        ] {
            assert!(!is_identifier(bad), "{bad:?}");
        }
    }

    #[test]
    fn slugs() {
        assert_eq!(app_slug("My.Bot__v2"), "my-bot-v2");
        assert_eq!(app_slug("-x-"), "x");
        assert_eq!(app_slug("_-_"), "app");
        assert_eq!(app_slug("telegram-bot"), "telegram-bot");
    }

    #[test]
    fn environment_names() {
        for ok in [
            "production",
            "staging-eu",
            "Prod_2",
            "v1.2",
            &"e".repeat(255),
        ] {
            assert!(check_environment(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".hidden",
            "prod uction",
            "prod\n",
            "a: b",
            "${{ secrets.X }}",
            "é",
            &"e".repeat(256),
        ] {
            assert!(check_environment(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn project_names() {
        for ok in ["a", "telegram-bot", "My.Bot_2", "-x", &"a".repeat(100)] {
            assert!(check_project_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "x.git",
            "X.GIT",
            "é",
            "a\nb",
            &"a".repeat(101),
        ] {
            assert!(check_project_name(bad).is_err(), "{bad:?}");
        }
    }
}
