//! Shared test support for the integration tests.
pub mod apiserver;
pub mod world;
