//! Helpers of the tests that run the `tierkv` binary: the engine tests' helpers (the
//! default model, engines over a chosen store) plus clusters of `tierkv` processes.
#![allow(dead_code, unreachable_pub)]

#[path = "../../../tests/common/mod.rs"]
mod engine_helpers;
pub(crate) use engine_helpers::*;

pub mod cluster;
pub mod serve_process;
