//! A droplet create body, checked the way DigitalOcean checks it (its messages, 422s).

use std::time::Instant;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::error::DoError;
use super::state::{Droplet, Key};

/// Largest `user_data` DigitalOcean accepts.
const USER_DATA_MAX: usize = 64 * 1024;

/// Validates a create body; returns the droplet's fields.
pub(super) fn validate_create(
    body: &Map<String, Value>,
    keys: &[Key],
    account: &str,
) -> Result<Droplet, DoError> {
    let name = match body.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.clone(),
        None | Some(Value::Null) => {
            if body.contains_key("names") {
                return Err(DoError::unprocessable(
                    "This emulator supports single Droplet creation only (\"name\").",
                ));
            }
            return Err(DoError::unprocessable("Name is required."));
        }
        _ => return Err(DoError::unprocessable("Name is required.")),
    };
    if name.len() > 255
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(DoError::unprocessable(
            "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)",
        ));
    }
    let slug_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    };
    let size = match body.get("size") {
        Some(Value::String(s)) if slug_ok(s) => s.clone(),
        _ => {
            return Err(DoError::unprocessable(
                "You specified an invalid size for Droplet creation.",
            ));
        }
    };
    let image = match body.get("image") {
        Some(Value::String(s)) if slug_ok(s) => Value::String(s.clone()),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => Value::Number(n.clone()),
        _ => {
            return Err(DoError::unprocessable(
                "You specified an invalid image for Droplet creation.",
            ));
        }
    };
    let region = match body.get("region") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if slug_ok(r) => Some(r.clone()),
        _ => {
            return Err(DoError::unprocessable(
                "You specified an invalid region for Droplet creation.",
            ));
        }
    };
    let ssh_keys = match body.get("ssh_keys") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                let id = match item {
                    Value::Number(n) if n.as_u64().is_some() => n.to_string(),
                    Value::String(s) if !s.is_empty() => s.clone(),
                    _ => {
                        return Err(DoError::unprocessable(
                            "ssh_keys must be a list of SSH key ids or fingerprints.",
                        ));
                    }
                };
                let known = keys.iter().any(|k| k.is_named_by(account, &id));
                if !known {
                    return Err(DoError::unprocessable(format!(
                        "You specified an invalid SSH key: {id}."
                    )));
                }
                out.push(id);
            }
            out
        }
        Some(_) => {
            return Err(DoError::unprocessable(
                "ssh_keys must be a list of SSH key ids or fingerprints.",
            ));
        }
    };
    let tags = match body.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Value::String(t) if valid_tag(t) => {
                        if !out.contains(t) {
                            out.push(t.clone());
                        }
                    }
                    _ => {
                        return Err(DoError::unprocessable(
                            "Tag names may only contain letters, numbers, colons, dashes and \
                             underscores, and must be at most 255 characters long.",
                        ));
                    }
                }
            }
            out
        }
        Some(_) => return Err(DoError::unprocessable("tags must be a list of strings.")),
    };
    let user_data = match body.get("user_data") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if u.len() <= USER_DATA_MAX => Some(u.clone()),
        Some(Value::String(_)) => {
            return Err(DoError::unprocessable(
                "user_data is too long: the limit is 64 KiB.",
            ));
        }
        Some(_) => return Err(DoError::unprocessable("user_data must be a string.")),
    };
    for flag in [
        "ipv6",
        "monitoring",
        "backups",
        "private_networking",
        "with_droplet_agent",
    ] {
        if !matches!(body.get(flag), None | Some(Value::Null | Value::Bool(_))) {
            return Err(DoError::unprocessable(format!("{flag} must be a boolean.")));
        }
    }
    let vpc_uuid = match body.get("vpc_uuid") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(v.clone()),
        Some(_) => return Err(DoError::unprocessable("vpc_uuid must be a string.")),
    };
    Ok(Droplet {
        id: 0,
        seq: 0,
        account: account.to_owned(),
        name,
        size,
        image,
        region,
        tags,
        user_data,
        ssh_keys,
        vpc_uuid,
        body: Value::Object(body.clone()),
        created: Instant::now(),
        created_at: OffsetDateTime::now_utc(),
        deleted: false,
        polls_404_left: 0,
        action_id: 0,
        host: None,
    })
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 255
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_'))
}
