//! What infra keeps: servers and the operations that change them, with their states and
//! kinds as enums (an unknown stored value is an error, never silently another one), and how
//! each looks in the contract.

use std::collections::HashMap;

use orchestrator_fields::{ProjectId, RequestId};
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::timestamp as ts;
use orchestrator_status::reason_of;
use serde::{Deserialize, Serialize};
use tonic::Status;

orchestrator_store::stored_enum! {
    /// Where a server lives.
    pub(crate) enum Provider: pb::Provider {
        DigitalOcean = "digitalocean" => Digitalocean,
        Time4Vps = "time4vps" => Time4vps,
    }
}

orchestrator_store::stored_enum! {
    /// A server's life: provisioning, then ready or failed; destroying, then destroyed.
    pub(crate) enum ServerState: pb::ServerState {
        Provisioning = "provisioning" => Provisioning,
        Ready = "ready" => Ready,
        Failed = "failed" => Failed,
        Destroying = "destroying" => Destroying,
        Destroyed = "destroyed" => Destroyed,
    }
}

orchestrator_store::stored_enum! {
    /// What an operation does to its server.
    pub(crate) enum OperationKind: pb::OperationKind {
        Provision = "provision" => Provision,
        Rotate = "rotate" => RotateDeployKey,
        Destroy = "destroy" => Destroy,
    }
}

orchestrator_store::stored_enum! {
    /// An operation: accepted (pending), running its steps, then ended one way or the other.
    pub(crate) enum OperationState: pb::OperationState {
        Pending = "pending" => Pending,
        Running = "running" => Running,
        Succeeded = "succeeded" => Succeeded,
        Failed = "failed" => Failed,
    }
}

impl Provider {
    /// The provider a request names; `None` for unspecified or unknown.
    pub(crate) fn from_pb(raw: i32) -> Option<Self> {
        match pb::Provider::try_from(raw) {
            Ok(pb::Provider::Digitalocean) => Some(Provider::DigitalOcean),
            Ok(pb::Provider::Time4vps) => Some(Provider::Time4Vps),
            _ => None,
        }
    }
}

impl ServerState {
    /// A destroy was asked for: provisioning stops, nothing else starts.
    pub(crate) fn is_going(self) -> bool {
        matches!(self, ServerState::Destroying | ServerState::Destroyed)
    }
}

impl OperationState {
    pub(crate) fn has_ended(self) -> bool {
        matches!(self, OperationState::Succeeded | OperationState::Failed)
    }
}

/// Where a server's provider (or DNS) token comes from: the platform's L1 token, or the
/// user's own key in the vault, read for each use. Stored as `{"platform":{}}` or
/// `{"user_vault":{"user_id":…,"key":…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CredentialSource {
    Platform {},
    UserVault { user_id: String, key: String },
}

impl CredentialSource {
    fn to_pb(&self) -> pb::CredentialSource {
        use pb::credential_source::Source;
        pb::CredentialSource {
            source: Some(match self {
                CredentialSource::Platform {} => Source::Platform(pb::PlatformCredential {}),
                CredentialSource::UserVault { user_id, key } => {
                    Source::UserVault(common::VaultEntryRef {
                        user_id: user_id.clone(),
                        key: key.clone(),
                        version: 0,
                    })
                }
            }),
        }
    }
}

/// A server as its row records it. Public keys only: the deploy private key went to the
/// broker the moment it existed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Server {
    pub(crate) id: String,
    pub(crate) project_id: String,
    pub(crate) provider: Provider,
    pub(crate) state: ServerState,
    pub(crate) hostname: String,
    pub(crate) provider_server_id: Option<String>,
    pub(crate) ipv4: Option<String>,
    pub(crate) region: String,
    pub(crate) size: String,
    pub(crate) image: String,
    pub(crate) deploy_user: String,
    pub(crate) deploy_public_key: Option<String>,
    pub(crate) host_public_key: Option<String>,
    pub(crate) dns_record_id: Option<String>,
    /// A Time4VPS reinstall infra started (and may still be waiting for).
    pub(crate) provider_task_id: Option<String>,
    #[sqlx(rename = "provider_credentials")]
    pub(crate) credentials: CredentialSource,
    pub(crate) dns_credentials: CredentialSource,
    /// The operation that provisioned it.
    pub(crate) operation_id: String,
    pub(crate) created_us: i64,
    pub(crate) updated_us: i64,
    pub(crate) ready_us: Option<i64>,
    pub(crate) destroyed_us: Option<i64>,
}

impl Server {
    /// Whether the provider was asked for the server (a droplet exists, or our reinstall was
    /// accepted): from then on a retry waits for it instead of asking again.
    pub(crate) fn started(&self) -> bool {
        match self.provider {
            Provider::DigitalOcean => self.provider_server_id.is_some(),
            Provider::Time4Vps => self.provider_task_id.is_some(),
        }
    }

    pub(crate) fn to_pb(&self) -> pb::Server {
        let fingerprint = |k: &Option<String>| {
            k.as_deref()
                .and_then(|k| orchestrator_deploy_keys::fingerprint(k).ok())
                .unwrap_or_default()
        };
        pb::Server {
            id: self.id.clone(),
            project_id: self.project_id.clone(),
            provider: self.provider.to_pb() as i32,
            provider_server_id: self.provider_server_id.clone().unwrap_or_default(),
            state: self.state.to_pb() as i32,
            hostname: self.hostname.clone(),
            ipv4_address: self.ipv4.clone().unwrap_or_default(),
            ipv6_address: String::new(),
            region: self.region.clone(),
            size: self.size.clone(),
            image: self.image.clone(),
            deploy_user: self.deploy_user.clone(),
            deploy_key_fingerprint: fingerprint(&self.deploy_public_key),
            host_key_fingerprint: fingerprint(&self.host_public_key),
            provider_credentials: Some(self.credentials.to_pb()),
            dns_credentials: Some(self.dns_credentials.to_pb()),
            operation_id: self.operation_id.clone(),
            create_time: Some(ts(self.created_us)),
            update_time: Some(ts(self.updated_us)),
            ready_time: self.ready_us.map(ts),
            destroy_time: self.destroyed_us.map(ts),
        }
    }
}

/// A server as a ProvisionServer request describes it, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewServer {
    pub(crate) project_id: ProjectId,
    pub(crate) provider: Provider,
    /// Time4VPS: the server bought in advance (DigitalOcean: none until it is created).
    pub(crate) provider_server_id: Option<String>,
    pub(crate) hostname: String,
    /// DigitalOcean's region and size (empty for Time4VPS); the image or OS template.
    pub(crate) region: String,
    pub(crate) size: String,
    pub(crate) image: String,
    pub(crate) deploy_user: String,
    pub(crate) credentials: CredentialSource,
    pub(crate) dns_credentials: CredentialSource,
}

impl NewServer {
    /// Whether `earlier` is the server this request asked for (a retry), not another one.
    pub(crate) fn is_described_by(&self, earlier: &Server) -> bool {
        earlier.project_id == self.project_id.as_str()
            && earlier.provider == self.provider
            && earlier.hostname == self.hostname
            && earlier.deploy_user == self.deploy_user
            && earlier.image == self.image
            && earlier.region == self.region
            && earlier.size == self.size
            && (self.provider_server_id.is_none()
                || earlier.provider_server_id == self.provider_server_id)
    }
}

pub(crate) type Step = pb::OperationStep;
pub(crate) type StepState = pb::OperationStepState;

/// An operation's steps in order, each with its state: stored as a JSON array of
/// `{step, state, detail, start_us?, end_us?}` (the contract's enum numbers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Steps(Vec<StepStatus>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StepStatus {
    #[serde(with = "contract_number")]
    step: Step,
    #[serde(with = "contract_number")]
    state: StepState,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_us: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_us: Option<i64>,
}

impl Steps {
    /// `steps`, all pending.
    pub(crate) fn pending(steps: &[Step]) -> Self {
        Self(
            steps
                .iter()
                .map(|&step| StepStatus {
                    step,
                    state: StepState::Pending,
                    detail: String::new(),
                    start_us: None,
                    end_us: None,
                })
                .collect(),
        )
    }

    /// Sets `step`'s state and detail at `now`: it started when first seen running (or done)
    /// and ended when it stops running.
    pub(crate) fn mark(&mut self, step: Step, state: StepState, detail: &str, now: i64) {
        for s in self.0.iter_mut().filter(|s| s.step == step) {
            s.state = state;
            s.detail = detail.to_owned();
            s.start_us.get_or_insert(now);
            if state != StepState::Running {
                s.end_us = Some(now);
            }
        }
    }

    /// Whether `step` ever started (it is no longer pending).
    pub(crate) fn started(&self, step: Step) -> bool {
        self.0
            .iter()
            .any(|s| s.step == step && s.state != StepState::Pending)
    }

    pub(crate) fn includes(&self, step: Step) -> bool {
        self.0.iter().any(|s| s.step == step)
    }

    fn to_pb(&self) -> Vec<pb::OperationStepStatus> {
        self.0
            .iter()
            .map(|s| pb::OperationStepStatus {
                step: s.step as i32,
                state: s.state as i32,
                detail: s.detail.clone(),
                start_time: s.start_us.map(ts),
                end_time: s.end_us.map(ts),
            })
            .collect()
    }
}

/// The contract's enums as their numbers in stored JSON.
mod contract_number {
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer, T: Copy + Into<i32>>(
        value: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_i32((*value).into())
    }

    pub(super) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<i32>,
        T::Error: std::fmt::Display,
    {
        T::try_from(i32::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// Why an operation failed: the final status, its reason and facts (from its `ErrorInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Failure {
    code: i32,
    reason: String,
    message: String,
    metadata: HashMap<String, String>,
}

impl Failure {
    pub(crate) fn of(status: &Status) -> Self {
        let (reason, metadata) = reason_of(status).unwrap_or_default();
        Self {
            code: status.code() as i32,
            reason,
            message: status.message().to_owned(),
            metadata,
        }
    }

    fn to_pb(&self) -> common::Failure {
        common::Failure {
            code: self.code,
            reason: self.reason.clone(),
            message: self.message.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// An operation as its row records it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Operation {
    pub(crate) id: String,
    pub(crate) request_id: Option<String>,
    pub(crate) kind: OperationKind,
    pub(crate) server_id: String,
    pub(crate) project_id: String,
    pub(crate) state: OperationState,
    pub(crate) steps: Steps,
    /// What it is doing now, or did last.
    pub(crate) message: String,
    pub(crate) error: Option<Failure>,
    pub(crate) created_us: i64,
    pub(crate) updated_us: i64,
    pub(crate) ended_us: Option<i64>,
}

impl Operation {
    pub(crate) fn to_pb(&self) -> pb::Operation {
        pb::Operation {
            id: self.id.clone(),
            kind: self.kind.to_pb() as i32,
            server_id: self.server_id.clone(),
            project_id: self.project_id.clone(),
            state: self.state.to_pb() as i32,
            steps: self.steps.to_pb(),
            status_message: self.message.clone(),
            error: self.error.as_ref().map(Failure::to_pb),
            request_id: self.request_id.clone().unwrap_or_default(),
            create_time: Some(ts(self.created_us)),
            update_time: Some(ts(self.updated_us)),
            end_time: self.ended_us.map(ts),
        }
    }
}

/// An operation as it is accepted, all its steps pending.
#[derive(Debug, Clone)]
pub(crate) struct NewOperation {
    pub(crate) id: String,
    pub(crate) request_id: Option<RequestId>,
    pub(crate) kind: OperationKind,
    pub(crate) server_id: String,
    pub(crate) project_id: String,
    pub(crate) steps: Steps,
}

impl NewOperation {
    /// A fresh operation id, `op-` and 16 hex digits.
    pub(crate) fn new_id() -> String {
        format!("op-{}", orchestrator_store::random_hex(8))
    }
}
