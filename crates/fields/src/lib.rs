//! Request fields every service shares, parsed once at the edge into types that cannot hold an
//! invalid value: [`RequestId`], [`ProjectId`], [`UserId`], and [`Page`] (one opaque page token
//! format, one default and one maximum page size for every list RPC).
//!
//! Parse with the field's name attached and collect every failure at once:
//!
//! ```
//! use orchestrator_fields::{ProjectId, RequestId};
//! use orchestrator_status::{At, Violations};
//! let (request_id, project_id) = Violations::new()
//!     .collect((
//!         RequestId::parse("req-1").at("request_id"),
//!         ProjectId::parse("prj-0a1b").at("project_id"),
//!     ))
//!     .unwrap();
//! assert_eq!(project_id.as_str(), "prj-0a1b");
//! # let _ = request_id;
//! ```

mod ids;
mod page;

pub use ids::{Invalid, ProjectId, RequestId, UserId};
pub use page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page};
