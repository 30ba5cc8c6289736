//! Each service's local environment, for `orchctl up` and the cross-process tests (`orchestrator-e2e`):
//! its own development secrets (0600 files in a folder of its own) and the variables its binary
//! reads, each named here once. Adding a setting that both need means editing this crate only.
//!
//! - `secrets`: [`DevSecrets`], the folders of secrets, and [`Secret`], what each secret is,
//!   whose it is and how a development value is made.
//! - `env`: [`ServiceEnv`], one service's variables, set by what they mean (where it listens,
//!   its database, its keys, GitHub, the providers, its peers); [`START_ORDER`] and
//!   [`dependencies`], who calls whom.
//! - `addresses`: waiting for a started process to say where it listens.
//! - `state`: [`StateDir`], the folder `orchctl up` keeps the local mesh in.

mod addresses;
mod env;
mod secrets;
mod state;

pub use addresses::{Bound, wait_for_address_file, wait_until_serving};
pub use env::{NOWHERE, Providers, START_ORDER, ServiceEnv, dependencies};
pub use secrets::{DevSecrets, Secret, VAULT_KEY_ID, random_key};
pub use state::StateDir;
