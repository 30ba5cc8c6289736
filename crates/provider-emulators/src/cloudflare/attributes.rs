//! Record attributes as Cloudflare documents them ("Record attributes"): a `comment` and
//! `tags`, which change nothing in DNS answers but say who a record is for, and the list
//! filters on them.
//!
//! - A comment is free text without `\n` or `\r`, at most [`CfPlan::comment_max`] characters
//!   (Free 100, paid plans 500).
//! - Tags are `name:value` pairs (a bare `name` is a tag with an empty value): names of
//!   letters, digits, `-` and `_`, not case-sensitive (stored lower-case); values follow the
//!   comment's character rules. Tags are a paid-plan feature: on Free a record with tags is
//!   refused.
//! - Filters: `comment` (= `comment.exact`), `comment.{exact,contains,startswith,endswith}`
//!   (case-insensitive), `comment.present`, `comment.absent`; `tag` (a bare name =
//!   `tag.present`, `name:value` = `tag.exact`), `tag.present`, `tag.absent`, `tag.exact`
//!   (case-insensitive too). Several filters: all must match.

use std::collections::HashMap;

use serde_json::Value;

use super::envelope::CfError;
use super::state::Record;

/// The account's plan, for what record attributes it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CfPlan {
    /// Comments up to 100 characters, no tags.
    #[default]
    Free,
    /// Pro, Business, Enterprise: comments up to 500 characters, tags.
    Paid,
}

impl CfPlan {
    pub fn comment_max(self) -> usize {
        match self {
            CfPlan::Free => 100,
            CfPlan::Paid => 500,
        }
    }
}

fn no_line_breaks(text: &str) -> bool {
    !text.contains(['\n', '\r'])
}

/// A comment from a body: `None` = absent, `Some(None)` = cleared (null or empty).
pub(super) fn parse_comment(
    v: Option<&Value>,
    plan: CfPlan,
) -> Result<Option<Option<String>>, CfError> {
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(c)) if c.is_empty() => Ok(Some(None)),
        Some(Value::String(c)) => {
            if !no_line_breaks(c) {
                return Err(CfError::validation(
                    "comment: new line and carriage return characters are not allowed.",
                ));
            }
            if c.chars().count() > plan.comment_max() {
                return Err(CfError::validation(format!(
                    "comment: the maximum length is {} characters on this plan.",
                    plan.comment_max()
                )));
            }
            Ok(Some(Some(c.clone())))
        }
        Some(_) => Err(CfError::validation("comment must be a string.")),
    }
}

/// Tags from a body: `None` = absent, `Some(vec![])` = cleared.
pub(super) fn parse_tags(v: Option<&Value>, plan: CfPlan) -> Result<Option<Vec<String>>, CfError> {
    let items = match v {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(Vec::new())),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(CfError::validation("tags must be an array of strings.")),
    };
    if !items.is_empty() && plan == CfPlan::Free {
        return Err(CfError::validation(
            "tags: DNS record tags are not available on the Free plan.",
        ));
    }
    let mut tags: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(tag) = item else {
            return Err(CfError::validation("tags must be an array of strings."));
        };
        let (name, value) = tag.split_once(':').unwrap_or((tag, ""));
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok || !no_line_breaks(value) {
            return Err(CfError::validation(format!(
                "tags: `{tag}` is not a name:value pair (names: letters, digits, - and _)."
            )));
        }
        let name = name.to_ascii_lowercase();
        if tags.iter().any(|t| tag_name(t) == name) {
            return Err(CfError::validation(format!(
                "tags: the tag name `{name}` is given twice."
            )));
        }
        tags.push(if tag.contains(':') {
            format!("{name}:{value}")
        } else {
            name
        });
    }
    Ok(Some(tags))
}

fn tag_name(tag: &str) -> &str {
    tag.split_once(':').map_or(tag, |(n, _)| n)
}

/// The comment and tag filters of a list query.
#[derive(Debug, Default)]
pub(super) struct Filters {
    comment: Vec<(String, String)>,
    tag: Vec<(String, String)>,
}

impl Filters {
    pub(super) fn from_query(q: &HashMap<String, String>) -> Self {
        let mut f = Filters::default();
        for (key, value) in q {
            if key == "comment" {
                f.comment.push(("exact".into(), value.clone()));
            } else if let Some(op) = key.strip_prefix("comment.") {
                f.comment.push((op.to_owned(), value.clone()));
            } else if key == "tag" {
                let op = if value.contains(':') {
                    "exact"
                } else {
                    "present"
                };
                f.tag.push((op.into(), value.clone()));
            } else if let Some(op) = key.strip_prefix("tag.") {
                f.tag.push((op.to_owned(), value.clone()));
            }
        }
        f
    }

    pub(super) fn matches(&self, r: &Record) -> bool {
        let comment = r.comment.as_deref().map(str::to_lowercase);
        let comment_ok = self.comment.iter().all(|(op, want)| {
            let want = want.to_lowercase();
            match (op.as_str(), comment.as_deref()) {
                ("present", c) => c.is_some(),
                ("absent", c) => c.is_none(),
                (_, None) => false,
                ("exact", Some(c)) => c == want,
                ("contains", Some(c)) => c.contains(&want),
                ("startswith", Some(c)) => c.starts_with(&want),
                ("endswith", Some(c)) => c.ends_with(&want),
                _ => true,
            }
        });
        let tag_ok = self.tag.iter().all(|(op, want)| {
            let want_name = tag_name(want).to_ascii_lowercase();
            let has_name = r.tags.iter().any(|t| tag_name(t) == want_name);
            match op.as_str() {
                "present" => has_name,
                "absent" => !has_name,
                "exact" => {
                    let want_value = want.split_once(':').map_or("", |(_, v)| v);
                    r.tags.iter().any(|t| {
                        tag_name(t) == want_name
                            && t.split_once(':')
                                .map_or("", |(_, v)| v)
                                .eq_ignore_ascii_case(want_value)
                    })
                }
                _ => true,
            }
        });
        comment_ok && tag_ok
    }
}
