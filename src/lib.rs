//! affinity-assistant: lets the parallel tasks of a pipeline run share a ReadWriteOnce volume.
//!
//! A pure decision [`core`] (runs + PVCs + config in, placeholders and pins out), engine
//! adapters that read pipeline engines' objects ([`engine`]), and the shells around them
//! (`render` today).

pub mod cluster;
pub mod config;
pub mod controller;
pub mod core;
pub mod decider;
pub mod engine;
pub mod health;
pub mod manifests;
pub mod model;
pub mod names;
pub mod pod;
pub mod render;
pub mod runtime;
pub mod views;
pub mod webhook;
