#![allow(clippy::unwrap_used)]

use std::time::Duration;

use orchestrator_proto::common::v1::VaultEntryRef;
use orchestrator_ssh::AdminKey;
use pb::provision_server_request::Spec;
use secrecy::SecretString;
use tonic_types::StatusExt as _;

use super::*;
use crate::config::{CloudflareSettings, DigitalOceanSettings, Time4VpsSettings};

/// Settings with a DNS zone (`zone`) and with or without the platform's provider tokens.
fn settings(zone: Option<&str>, platform_tokens: bool) -> Settings {
    let key = keys::generate("admin").unwrap();
    let token = || platform_tokens.then(|| SecretString::from("token".to_owned()));
    Settings {
        admin_key: AdminKey::from_openssh(&key.private_openssh).unwrap(),
        digitalocean: DigitalOceanSettings {
            url: String::new(),
            token: token(),
        },
        time4vps: Time4VpsSettings {
            url: String::new(),
            login: token().map(|password| ("user".to_owned(), password)),
            default_os: "kvm-ubuntu-24.04-gpt-x86_64".to_owned(),
        },
        cloudflare: CloudflareSettings {
            url: String::new(),
            token: token(),
            zone: zone.map(str::to_owned),
            reserved: crate::config::ReservedNames::default(),
        },
        ssh_port: 22,
        ready_timeout: Duration::from_secs(1),
        operation_deadline: Duration::from_secs(60),
        git_url: String::new(),
        max_watches_per_caller: 32,
        operation_lease: Duration::from_secs(30),
        github_api_url: String::new(),
    }
}

fn digitalocean(hostname: &str) -> pb::ProvisionServerRequest {
    pb::ProvisionServerRequest {
        request_id: "req-1".into(),
        project_id: "prj-1".into(),
        hostname: hostname.into(),
        provider: pb::Provider::Digitalocean as i32,
        spec: Some(Spec::Digitalocean(pb::DigitalOceanServerSpec {
            region: "fra1".into(),
            size: "s-1vcpu-1gb".into(),
            image: "ubuntu-24-04-x64".into(),
        })),
        ..Default::default()
    }
}

fn time4vps(server_id: i64, os: &str) -> pb::ProvisionServerRequest {
    pb::ProvisionServerRequest {
        provider: pb::Provider::Time4vps as i32,
        spec: Some(Spec::Time4vps(pb::Time4VpsServerSpec {
            server_id,
            os: os.into(),
        })),
        ..digitalocean("app.example.test")
    }
}

fn user_vault(user_id: &str, key: &str) -> Option<pb::CredentialSource> {
    Some(pb::CredentialSource {
        source: Some(pb::credential_source::Source::UserVault(VaultEntryRef {
            user_id: user_id.into(),
            key: key.into(),
            version: 0,
        })),
    })
}

/// The fields an INVALID_ARGUMENT names, in order.
fn fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status.get_error_details().bad_request().cloned().unwrap();
    bad.field_violations.into_iter().map(|f| f.field).collect()
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .unwrap()
        .reason
        .clone()
}

#[test]
fn a_provision_request_becomes_a_new_server_with_its_defaults() {
    let settings = settings(Some("example.test"), true);
    let request = provision(digitalocean("app.example.test"), &settings).unwrap();
    assert_eq!(request.request_id.as_str(), "req-1");
    assert!(!request.checkout_repository);
    let server = request.server;
    assert_eq!(server.project_id.as_str(), "prj-1");
    assert_eq!(server.provider, Provider::DigitalOcean);
    assert_eq!(
        (server.region.as_str(), server.size.as_str()),
        ("fra1", "s-1vcpu-1gb")
    );
    assert_eq!(
        (server.image.as_str(), server.deploy_user.as_str()),
        ("ubuntu-24-04-x64", "deploy")
    );
    assert_eq!(server.provider_server_id, None);
    assert_eq!(server.credentials, CredentialSource::Platform {});
    assert_eq!(server.dns_credentials, CredentialSource::Platform {});

    // Time4VPS: the server bought in advance, and the default OS when none is named.
    let server = provision(time4vps(101, ""), &settings).unwrap().server;
    assert_eq!(server.provider_server_id.as_deref(), Some("101"));
    assert_eq!(server.image, "kvm-ubuntu-24.04-gpt-x86_64");
    assert!(server.region.is_empty() && server.size.is_empty());
    let server = provision(time4vps(101, "kvm-debian-12"), &settings)
        .unwrap()
        .server;
    assert_eq!(server.image, "kvm-debian-12");
}

#[test]
fn every_violation_of_a_provision_request_is_named_at_once() {
    let settings = settings(Some("example.test"), true);
    let empty = provision(pb::ProvisionServerRequest::default(), &settings).unwrap_err();
    assert_eq!(
        fields(&empty),
        [
            "hostname",
            "hostname",
            "spec",
            "request_id",
            "project_id",
            "provider"
        ]
    );
    let mut bad = time4vps(0, "../etc");
    bad.deploy_user = keys::ADMIN_USER.into();
    bad.project_id = "prj/1".into();
    bad.provider_credentials = user_vault("u1", "");
    bad.dns_credentials = user_vault("", "cf");
    assert_eq!(
        fields(&provision(bad, &settings).unwrap_err()),
        [
            "time4vps.server_id",
            "time4vps.os",
            "deploy_user",
            "provider_credentials.user_vault",
            "dns_credentials.user_vault",
            "project_id",
        ]
    );
    // The spec must be the provider's.
    let mut mismatched = digitalocean("app.example.test");
    mismatched.provider = pb::Provider::Time4vps as i32;
    assert_eq!(
        fields(&provision(mismatched, &settings).unwrap_err()),
        ["spec"]
    );
    let mut root = digitalocean("app.example.test");
    root.deploy_user = "root".into();
    assert_eq!(
        fields(&provision(root, &settings).unwrap_err()),
        ["deploy_user"]
    );
}

#[test]
fn hostnames_are_lowercase_dns_names_inside_the_zone() {
    for good in [
        "a",
        "app.example.test",
        "a-1.b2.example.test",
        &"a".repeat(63),
    ] {
        assert!(valid_hostname(good), "{good}");
    }
    for bad in [
        "",
        "App.test",
        "-a.test",
        "a-.test",
        "a..test",
        "a_b.test",
        &"a".repeat(64),
    ] {
        assert!(!valid_hostname(bad), "{bad}");
    }
    let zoned = settings(Some("example.test"), true);
    assert!(provision(digitalocean("web.example.test"), &zoned).is_ok());
    assert!(provision(digitalocean("www.app.example.test"), &zoned).is_ok());
    // The apex and the reserved names are the zone owner's.
    for (taken, said) in [
        ("example.test", "zone apex `example.test`"),
        ("www.example.test", "`www` is a reserved name"),
        ("mail.example.test", "`mail` is a reserved name"),
        ("ns1.example.test", "`ns1` is a reserved name"),
    ] {
        let refused = provision(digitalocean(taken), &zoned).unwrap_err();
        assert_eq!(fields(&refused), ["hostname"], "{taken}");
        assert!(refused.message().contains(said), "{taken}: {refused:?}");
    }
    let mut own = settings(Some("example.test"), true);
    own.cloudflare.reserved = "shop".parse().unwrap();
    assert!(provision(digitalocean("www.example.test"), &own).is_ok());
    assert!(provision(digitalocean("shop.example.test"), &own).is_err());
    for outside in ["app.example.com", "appexample.test"] {
        let refused = provision(digitalocean(outside), &zoned).unwrap_err();
        assert_eq!(fields(&refused), ["hostname"]);
        assert!(
            refused
                .message()
                .contains("inside the DNS zone `example.test`")
        );
    }
    // Without a zone, any valid name.
    assert!(provision(digitalocean("app.example.com"), &settings(None, true)).is_ok());
}

#[test]
fn what_infra_is_not_configured_for_is_refused_at_once() {
    let bare = settings(None, false);
    let refused = provision(digitalocean("app.example.test"), &bare).unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "PROVIDER_NOT_CONFIGURED");
    assert!(refused.message().contains("DIGITALOCEAN_TOKEN"));
    let refused = provision(time4vps(101, ""), &bare).unwrap_err();
    assert!(
        refused
            .message()
            .contains("TIME4VPS_USER and TIME4VPS_PASSWORD")
    );
    // The user's own key stands in for the platform's.
    let mut own = digitalocean("app.example.test");
    own.provider_credentials = user_vault("u1", "do-token");
    let server = provision(own.clone(), &bare).unwrap().server;
    assert_eq!(
        server.credentials,
        CredentialSource::UserVault {
            user_id: "u1".into(),
            key: "do-token".into()
        }
    );
    // DNS credentials need a zone to be used in.
    own.dns_credentials = user_vault("u1", "cf-token");
    let refused = provision(own, &bare).unwrap_err();
    assert_eq!(reason(&refused), "DNS_NOT_CONFIGURED");
}

#[test]
fn only_the_projects_owner_may_lend_a_vault_credential() {
    let settings = settings(Some("example.test"), true);
    let server = |provider: Option<&str>, dns: Option<&str>| {
        let mut request = digitalocean("app.example.test");
        request.provider_credentials = provider.and_then(|u| user_vault(u, "do"));
        request.dns_credentials = dns.and_then(|u| user_vault(u, "cf"));
        provision(request, &settings).unwrap().server
    };
    // The platform's credentials need no owner; the owner's own keys pass.
    assert!(vault_users(&server(None, None)).is_empty());
    credentials_owned_by(&server(None, None), "alice").unwrap();
    credentials_owned_by(&server(Some("alice"), Some("alice")), "alice").unwrap();
    assert_eq!(
        vault_users(&server(Some("alice"), Some("bob"))),
        [
            ("provider_credentials", "alice"),
            ("dns_credentials", "bob")
        ]
    );
    // Anyone else's key, for the provider or for DNS, is refused, naming the field.
    for (provider, dns, field) in [
        (Some("bob"), None, "provider_credentials"),
        (Some("alice"), Some("bob"), "dns_credentials"),
        (None, Some("Alice"), "dns_credentials"),
    ] {
        let refused = credentials_owned_by(&server(provider, dns), "alice").unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        let info = refused.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "CREDENTIAL_NOT_OWNED");
        assert_eq!(info.metadata["field"], field);
        assert_eq!(info.metadata["project_id"], "prj-1");
        assert!(refused.message().ends_with("[CREDENTIAL_NOT_OWNED]"));
    }
}

#[test]
fn a_rotation_needs_a_request_id_and_a_server() {
    let refused = rotate(pb::RotateDeployKeyRequest::default()).unwrap_err();
    assert_eq!(fields(&refused), ["request_id", "server_id"]);
    let request = rotate(pb::RotateDeployKeyRequest {
        request_id: "rot-1".into(),
        server_id: "srv-1".into(),
    })
    .unwrap();
    assert_eq!(
        (request.request_id.as_str(), request.server_id.as_str()),
        ("rot-1", "srv-1")
    );
    assert!(same_request(true).is_ok());
    assert_eq!(fields(&same_request(false).unwrap_err()), ["request_id"]);
}

#[test]
fn lists_start_at_the_newest_and_go_on_after_their_token() {
    let first = list(&pb::ListServersRequest::default()).unwrap();
    assert_eq!(first.after, After::start());
    assert_eq!(first.filter, ServerFilter::default());
    assert_eq!(first.page.size(), orchestrator_fields::DEFAULT_PAGE_SIZE);

    // The token the first page of one ends with is where the second starts.
    let one = list(&pb::ListServersRequest {
        page_size: 1,
        project_id: "prj-1".into(),
        provider: pb::Provider::Time4vps as i32,
        show_destroyed: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        one.filter,
        ServerFilter {
            project_id: "prj-1".into(),
            provider: Some(Provider::Time4Vps),
            show_destroyed: true,
        }
    );
    let mut rows = vec![(30, "srv-b"), (20, "srv-a")];
    let token = one
        .page
        .finish(&mut rows, |(us, id)| vec![us.to_string(), (*id).to_owned()]);
    let next = list(&pb::ListServersRequest {
        page_size: 1,
        page_token: token,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        next.after,
        After {
            created_us: 30,
            id: "srv-b".into()
        }
    );

    for (page_size, page_token, provider, field) in [
        (-1, "", 0, "page_size"),
        (0, "garbage", 0, "page_token"),
        (0, "", 99, "provider"),
    ] {
        let refused = list(&pb::ListServersRequest {
            page_size,
            page_token: page_token.into(),
            provider,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(fields(&refused), [field]);
    }
    // A token of the right shape whose time is not a number was not issued here.
    let mut rows = vec![("x", "srv-a"), ("y", "srv-b")];
    let forged = Page::parse(1, "", 2)
        .unwrap()
        .finish(&mut rows, |(us, id)| {
            vec![(*us).to_owned(), (*id).to_owned()]
        });
    let refused = list(&pb::ListServersRequest {
        page_token: forged,
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(fields(&refused), ["page_token"]);
}
