//! The decision core: pure, synchronous, no I/O. The controller, the webhook and `render` all
//! call it, and none of them re-derives a decision on its own.
//!
//! - [`claims`]: which of a run's claims are managed, and how they group within the run;
//! - [`plan`]: placeholders of a namespace across runs (I1, I3, I4);
//! - [`placeholder`]: the StatefulSet of a new placeholder;
//! - [`pin`]: what a task pod gets (I2, I5);
//! - [`scheduling`]: node selector, node affinity and toleration matching.

pub mod claims;
pub mod pin;
pub mod placeholder;
pub mod plan;
pub mod scheduling;

pub use claims::MissingClaims;
pub use pin::{Decision, Pin, Skip, SkipReason, decide};
pub use plan::{NamespaceState, Plan, PlannedPlaceholder, RunPlan, RunStatus, plan};
