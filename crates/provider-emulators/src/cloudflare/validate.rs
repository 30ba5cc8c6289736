//! A DNS record body and a record as Cloudflare checks them: name expansion, per-field
//! validation (its codes), content per type, and the "already exists" conflicts.

use serde_json::{Map, Value};

use super::attributes::{CfPlan, parse_comment, parse_tags};
use super::envelope::CfError;
use super::state::{Record, Zone};

/// Cloudflare's name rules: lower-case FQDN; `@` is the apex; a name outside the zone gets the
/// zone appended.
fn full_name(zone: &Zone, name: &str) -> String {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name == "@" || name == zone.name {
        zone.name.clone()
    } else if name.ends_with(&format!(".{}", zone.name)) {
        name
    } else {
        format!("{name}.{}", zone.name)
    }
}

/// The fields of a record body; `None` where absent (PATCH).
#[derive(Debug, Default)]
pub(super) struct Fields {
    type_: Option<String>,
    name: Option<String>,
    content: Option<String>,
    ttl: Option<u32>,
    proxied: Option<bool>,
    comment: Option<Option<String>>,
    tags: Option<Vec<String>>,
}

impl Fields {
    /// Writes these fields into `record`: all of them (`replace`, a PUT or a create: type,
    /// name and content required, ttl and proxied back to their defaults) or only those given
    /// (a PATCH). `proxied_default` is the zone's proxy status for a proxiable record (A, AAAA,
    /// CNAME) whose writer does not say (`CfConfig::proxied_by_default`).
    pub(super) fn apply(
        self,
        record: &mut Record,
        replace: bool,
        proxied_default: bool,
    ) -> Result<(), CfError> {
        if replace {
            record.type_ = self
                .type_
                .ok_or_else(|| CfError::validation("type is required."))?;
            record.name = self
                .name
                .ok_or_else(|| CfError::bad(9007, "DNS record name is required."))?;
            record.content = self
                .content
                .ok_or_else(|| CfError::validation("content is required."))?;
            record.ttl = self.ttl.unwrap_or(1);
            let proxiable = matches!(record.type_.as_str(), "A" | "AAAA" | "CNAME");
            record.proxied = self.proxied.unwrap_or(proxied_default && proxiable);
            record.comment = self.comment.flatten();
            record.tags = self.tags.unwrap_or_default();
            return Ok(());
        }
        if let Some(t) = self.type_ {
            record.type_ = t;
        }
        if let Some(n) = self.name {
            record.name = n;
        }
        if let Some(c) = self.content {
            record.content = c;
        }
        if let Some(t) = self.ttl {
            record.ttl = t;
        }
        if let Some(p) = self.proxied {
            record.proxied = p;
        }
        if let Some(c) = self.comment {
            record.comment = c;
        }
        if let Some(t) = self.tags {
            record.tags = t;
        }
        Ok(())
    }
}

const TYPES: [&str; 8] = ["A", "AAAA", "CNAME", "TXT", "MX", "NS", "CAA", "SRV"];

pub(super) fn parse_fields(
    body: &Map<String, Value>,
    zone: &Zone,
    plan: CfPlan,
) -> Result<Fields, CfError> {
    let mut f = Fields::default();
    match body.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if TYPES.contains(&t.to_ascii_uppercase().as_str()) => {
            f.type_ = Some(t.to_ascii_uppercase());
        }
        Some(_) => return Err(CfError::validation("Invalid record type.")),
    }
    match body.get("name") {
        None | Some(Value::Null) => {}
        Some(Value::String(n)) if !n.trim().is_empty() && n.len() <= 255 => {
            f.name = Some(full_name(zone, n));
        }
        Some(_) => return Err(CfError::bad(9007, "DNS record name is invalid.")),
    }
    match body.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(c)) => f.content = Some(c.trim().to_owned()),
        Some(_) => return Err(CfError::bad(9005, "Content for the record is invalid.")),
    }
    match body.get("ttl") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => match n.as_u64() {
            Some(ttl @ (1 | 60..=86400)) => f.ttl = u32::try_from(ttl).ok(),
            _ => return Err(bad_ttl()),
        },
        Some(_) => return Err(bad_ttl()),
    }
    match body.get("proxied") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => f.proxied = Some(*b),
        Some(_) => {
            return Err(CfError::bad(
                9003,
                "Invalid 'proxied' value, must be a boolean",
            ));
        }
    }
    f.comment = parse_comment(body.get("comment"), plan)?;
    f.tags = parse_tags(body.get("tags"), plan)?;
    Ok(f)
}

fn bad_ttl() -> CfError {
    CfError::bad(
        9021,
        "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for Automatic.",
    )
}

/// Checks a complete record: content for its type, proxied only where proxiable.
pub(super) fn check_record(r: &Record) -> Result<(), CfError> {
    match r.type_.as_str() {
        "A" if r.content.parse::<std::net::Ipv4Addr>().is_err() => Err(CfError::bad(
            9005,
            "Content for A record must be a valid IPv4 address.",
        )),
        "AAAA" if r.content.parse::<std::net::Ipv6Addr>().is_err() => Err(CfError::bad(
            9006,
            "Content for AAAA record must be a valid IPv6 address.",
        )),
        "CNAME"
            if r.content.is_empty()
                || !r
                    .content
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) =>
        {
            Err(CfError::bad(9007, "Content for CNAME record is invalid."))
        }
        "TXT" | "MX" | "NS" | "CAA" | "SRV" if r.proxied => {
            Err(CfError::bad(9004, "This record type cannot be proxied."))
        }
        _ if r.content.is_empty() => Err(CfError::validation("content is required.")),
        _ => Ok(()),
    }
}

/// Refuses a record that collides with another of the zone (`except` = itself, on update): a
/// CNAME beside anything of its host, an identical record. Several A or AAAA records of one
/// name with other contents are fine (Cloudflare's round-robin).
pub(super) fn check_conflicts(
    records: &[Record],
    r: &Record,
    except: Option<&str>,
) -> Result<(), CfError> {
    let address = |t: &str| matches!(t, "A" | "AAAA");
    for other in records
        .iter()
        .filter(|o| o.zone_id == r.zone_id && o.name == r.name && Some(o.id.as_str()) != except)
    {
        let host_clash = (r.type_ == "CNAME" && (address(&other.type_) || other.type_ == "CNAME"))
            || (address(&r.type_) && other.type_ == "CNAME");
        if host_clash {
            return Err(exists());
        }
        if other.type_ == r.type_ && other.content == r.content {
            return Err(CfError::bad(81058, "An identical record already exists."));
        }
    }
    Ok(())
}

fn exists() -> CfError {
    CfError::bad(
        81053,
        "An A, AAAA, or CNAME record with that host already exists.",
    )
}
