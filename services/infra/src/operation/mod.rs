//! Operations: provisioning, rotating keys and destroying servers in the background, step by
//! step, each step recorded so an infra restart resumes where it stopped, and retried only
//! where it is safe. This module depends on the state, the model and the database, never on
//! the handlers.

mod checkout;
mod compensate;
mod credentials;
mod destroy;
mod dns;
mod failure;
mod handover;
mod lease;
mod precheck;
mod provision;
mod rotate;
mod runner;
mod ssh;
mod steps;

pub(crate) use dns::refuse_foreign_records;
pub(crate) use lease::Leases;
pub(crate) use precheck::refuse_unknown_time4vps_server;
pub(crate) use runner::{resume_unfinished, start};
pub(crate) use steps::{DESTROY, ROTATE, provision_steps};
