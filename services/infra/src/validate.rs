//! Requests into typed values, every violation reported at once (INVALID_ARGUMENT), before
//! anything is read or written.

use orchestrator_deploy_keys as keys;
use orchestrator_fields::{Invalid, Page, ProjectId, RequestId};
use orchestrator_proto::infra::v1 as pb;
use orchestrator_status::{At as _, Violations, with_reason};
use tonic::{Code, Status};

use crate::config::{ReservedNames, Settings};
use crate::db::{After, ServerFilter};
use crate::model::{CredentialSource, NewServer, Provider};

/// A valid ProvisionServer request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProvisionRequest {
    pub(crate) request_id: RequestId,
    pub(crate) server: NewServer,
    pub(crate) checkout_repository: bool,
}

/// A valid RotateDeployKey request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RotateRequest {
    pub(crate) request_id: RequestId,
    pub(crate) server_id: String,
}

/// A valid ListServers request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListRequest {
    pub(crate) filter: ServerFilter,
    pub(crate) page: Page,
    pub(crate) after: After,
}

/// A ProvisionServer request, checked against what infra is configured for: a hostname in
/// its DNS zone, and the platform credentials it would use.
pub(crate) fn provision(
    req: pb::ProvisionServerRequest,
    settings: &Settings,
) -> Result<ProvisionRequest, Status> {
    let mut v = Violations::new();
    v.check(
        valid_hostname(&req.hostname),
        "hostname",
        "a lowercase DNS name",
    );
    if let Some(zone) = &settings.cloudflare.zone {
        hostname_in_zone(&mut v, &req.hostname, zone, &settings.cloudflare.reserved);
    }
    let provider = Provider::from_pb(req.provider)
        .ok_or(Invalid("DIGITALOCEAN or TIME4VPS"))
        .at("provider");
    let place = place(
        &mut v,
        req.spec,
        provider.as_ref().ok().copied(),
        &settings.time4vps.default_os,
    );
    let deploy_user = if req.deploy_user.is_empty() {
        "deploy".to_owned()
    } else {
        req.deploy_user
    };
    v.check(
        keys::valid_user(&deploy_user) && deploy_user != keys::ADMIN_USER,
        "deploy_user",
        "1-32 of [a-z0-9_-] starting with a letter; not root or the admin account",
    );
    let credentials = credential_source(&mut v, "provider_credentials", req.provider_credentials);
    let dns_credentials = credential_source(&mut v, "dns_credentials", req.dns_credentials);
    let (request_id, project_id, provider) = v.collect((
        RequestId::parse(&req.request_id).at("request_id"),
        ProjectId::parse(&req.project_id).at("project_id"),
        provider,
    ))?;
    let server = NewServer {
        project_id,
        provider,
        provider_server_id: place.provider_server_id,
        hostname: req.hostname,
        region: place.region,
        size: place.size,
        image: place.image,
        deploy_user,
        credentials,
        dns_credentials,
    };
    configured_for(&server, settings)?;
    Ok(ProvisionRequest {
        request_id,
        server,
        checkout_repository: req.checkout_repository,
    })
}

/// What the server row records of the spec: DigitalOcean's region, size and image; Time4VPS's
/// server id and OS.
#[derive(Debug, Default)]
struct Place {
    region: String,
    size: String,
    image: String,
    provider_server_id: Option<String>,
}

fn place(
    v: &mut Violations,
    spec: Option<pb::provision_server_request::Spec>,
    provider: Option<Provider>,
    default_os: &str,
) -> Place {
    use pb::provision_server_request::Spec;
    match (spec, provider) {
        (Some(Spec::Digitalocean(d)), Some(Provider::DigitalOcean)) => {
            v.check(
                !d.region.is_empty() && !d.size.is_empty() && !d.image.is_empty(),
                "digitalocean",
                "region, size and image are required",
            );
            Place {
                region: d.region,
                size: d.size,
                image: d.image,
                provider_server_id: None,
            }
        }
        (Some(Spec::Time4vps(t)), Some(Provider::Time4Vps)) => {
            v.check(
                t.server_id > 0,
                "time4vps.server_id",
                "the id of a server bought in advance",
            );
            let os = if t.os.is_empty() {
                default_os.to_owned()
            } else {
                t.os
            };
            v.check(
                os.len() <= 128
                    && os
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "time4vps.os",
                "an OS template name such as kvm-ubuntu-24.04-gpt-x86_64",
            );
            Place {
                image: os,
                provider_server_id: Some(t.server_id.to_string()),
                ..Place::default()
            }
        }
        _ => {
            v.add(
                "spec",
                "the spec must match the provider (digitalocean or time4vps)",
            );
            Place::default()
        }
    }
}

/// A credential source from the request; a vault reference needs both its parts.
fn credential_source(
    v: &mut Violations,
    field: &str,
    source: Option<pb::CredentialSource>,
) -> CredentialSource {
    match source.and_then(|c| c.source) {
        Some(pb::credential_source::Source::UserVault(u)) => {
            v.check(
                !u.user_id.is_empty() && !u.key.is_empty(),
                format!("{field}.user_vault"),
                "user_id and key are required",
            );
            CredentialSource::UserVault {
                user_id: u.user_id,
                key: u.key,
            }
        }
        _ => CredentialSource::Platform {},
    }
}

/// A server's name is a name inside the zone: not the apex (the zone owner's own name, its
/// mail and web), not a reserved name (`INFRA_RESERVED_HOSTNAMES`).
fn hostname_in_zone(v: &mut Violations, hostname: &str, zone: &str, reserved: &ReservedNames) {
    match hostname
        .strip_suffix(zone)
        .and_then(|r| r.strip_suffix('.'))
    {
        _ if hostname == zone => v.add(
            "hostname",
            format!("the zone apex `{zone}` is not a server's name; use a name inside it"),
        ),
        Some(relative) if reserved.contains(relative) => v.add(
            "hostname",
            format!("`{relative}` is a reserved name in `{zone}` (INFRA_RESERVED_HOSTNAMES)"),
        ),
        Some(_) => {}
        None => v.add("hostname", format!("must be inside the DNS zone `{zone}`")),
    }
}

/// The users whose vault entries `server` would spend: its provider and DNS credentials, when
/// they are a user's own, with the request field each came from.
pub(crate) fn vault_users(server: &NewServer) -> Vec<(&'static str, &str)> {
    [
        ("provider_credentials", &server.credentials),
        ("dns_credentials", &server.dns_credentials),
    ]
    .into_iter()
    .filter_map(|(field, source)| match source {
        CredentialSource::UserVault { user_id, .. } => Some((field, user_id.as_str())),
        CredentialSource::Platform {} => None,
    })
    .collect()
}

/// Refuses a vault reference of any user but the project's owner: PERMISSION_DENIED, reason
/// `CREDENTIAL_NOT_OWNED` (metadata: the field and the project), before anything is recorded
/// or any provider is called.
// Architecture Invariant: a user's own credential serves only that user's projects.
pub(crate) fn credentials_owned_by(server: &NewServer, owner: &str) -> Result<(), Status> {
    match vault_users(server)
        .into_iter()
        .find(|(_, user)| *user != owner)
    {
        None => Ok(()),
        Some((field, _)) => Err(with_reason(
            Code::PermissionDenied,
            "CREDENTIAL_NOT_OWNED",
            format!(
                "{field} names another user's vault entry than the owner of project `{}`; a user's own key serves only that user's projects",
                server.project_id.as_str()
            ),
            &[
                ("field", field.to_owned()),
                ("project_id", server.project_id.as_str().to_owned()),
            ],
        )),
    }
}

fn valid_hostname(h: &str) -> bool {
    (1..=253).contains(&h.len())
        && h.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Refuses at once, not in the background, a platform credential infra does not have, and
/// DNS credentials where infra has no DNS zone.
fn configured_for(server: &NewServer, settings: &Settings) -> Result<(), Status> {
    let platform_missing = match server.provider {
        Provider::DigitalOcean => settings
            .digitalocean
            .token
            .is_none()
            .then_some("DIGITALOCEAN_TOKEN"),
        Provider::Time4Vps => settings
            .time4vps
            .login
            .is_none()
            .then_some("TIME4VPS_USER and TIME4VPS_PASSWORD"),
    };
    if let (CredentialSource::Platform {}, Some(missing)) = (&server.credentials, platform_missing)
    {
        return Err(with_reason(
            Code::FailedPrecondition,
            "PROVIDER_NOT_CONFIGURED",
            format!(
                "infra has no platform credential for {} ({missing}); pass the user's own key in provider_credentials",
                server.provider
            ),
            &[],
        ));
    }
    if settings.cloudflare.zone.is_none()
        && matches!(server.dns_credentials, CredentialSource::UserVault { .. })
    {
        return Err(with_reason(
            Code::FailedPrecondition,
            "DNS_NOT_CONFIGURED",
            "infra has no DNS zone (CLOUDFLARE_ZONE): dns_credentials cannot be used",
            &[],
        ));
    }
    Ok(())
}

pub(crate) fn rotate(req: pb::RotateDeployKeyRequest) -> Result<RotateRequest, Status> {
    let required = if req.server_id.is_empty() {
        Err(Invalid("required"))
    } else {
        Ok(req.server_id)
    };
    let (request_id, server_id) = Violations::new().collect((
        RequestId::parse(&req.request_id).at("request_id"),
        required.at("server_id"),
    ))?;
    Ok(RotateRequest {
        request_id,
        server_id,
    })
}

/// A request id seen before must come with the same request: a retry, not another request.
pub(crate) fn same_request(same: bool) -> Result<(), Status> {
    let mut v = Violations::new();
    v.check(same, "request_id", "already used for a different request");
    v.finish()
}

/// ListServers pages newest first: a page token is the `(created_us, id)` it ends at.
pub(crate) fn list(req: &pb::ListServersRequest) -> Result<ListRequest, Status> {
    let provider = match pb::Provider::try_from(req.provider) {
        Ok(pb::Provider::Unspecified) => Ok(None),
        Ok(known) => Ok(Provider::from_pb(known as i32)),
        Err(_) => Err(Invalid("unknown provider")),
    };
    let (page, provider) = Violations::new().collect((
        Page::parse(req.page_size, &req.page_token, 2).and_then(|page| {
            let after = after(&page).at("page_token")?;
            Ok((page, after))
        }),
        provider.at("provider"),
    ))?;
    let (page, after) = page;
    Ok(ListRequest {
        filter: ServerFilter {
            project_id: req.project_id.clone(),
            provider,
            show_destroyed: req.show_destroyed,
        },
        page,
        after,
    })
}

/// Where a page starts: the first page at the start, a later one after its token's server.
fn after(page: &Page) -> Result<After, Invalid> {
    match page.after() {
        None => Ok(After::start()),
        Some([created_us, id]) => Ok(After {
            created_us: created_us
                .parse()
                .map_err(|_| Invalid("not a page token this service issued"))?,
            id: id.clone(),
        }),
        Some(_) => Err(Invalid("not a page token this service issued")),
    }
}

#[cfg(test)]
mod tests;
