//! Shared test support for the integration tests.
pub mod admission;
pub mod apiserver;
pub mod replay;
pub mod scheduler;
pub mod world;
