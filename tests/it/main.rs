//! The single integration-test binary: one module per feature, sharing the fakes in tests/support.
// Items shared between test modules are `pub`; this binary exports nothing.
#![allow(unreachable_pub)]

#[path = "../support/mod.rs"]
mod support;

mod fakes;

mod access;
mod cli;
mod deploy;
mod doctor;
mod egress;
mod fairness;
mod forwarding;
mod git;
mod hardening;
mod harness;
mod hosts;
mod identities;
mod keyless;
mod layout;
mod learn;
mod streaming;
mod suggest;
mod tls_listener;
mod tokens;
