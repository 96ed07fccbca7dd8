//! Shared plumbing of the kubeovn-multivpc controllers, so that each binary's `main` is only
//! "parse flags, build the controller, run it":
//!
//! - [`args::CommonArgs`]: the flags every controller takes, with environment fallbacks;
//! - [`telemetry`]: text or JSON logs;
//! - [`metrics`]: the Prometheus registry with controller-runtime-compatible reconcile metrics;
//! - [`admin`]: the `/metrics`, `/healthz` and `/readyz` endpoints;
//! - [`liveness`]: what `/healthz` fails on (a watch or reconcile that stalls);
//! - [`finalizer`]: kube's finalizer helper with an add that cannot be refused;
//! - [`own_writes`]: this process's last writes, until its cache shows them;
//! - [`watch`]: caches fed by watches that one undecodable object cannot stop;
//! - [`leader`]: Lease-based leader election that starts and stops the controller;
//! - [`Runtime`]: ties them together with graceful shutdown on SIGTERM.

pub mod admin;
pub mod args;
pub mod backoff;
pub mod broker;
pub mod events;
pub mod finalizer;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod own_writes;
pub mod pod_exec;
pub mod runtime;
pub mod status;
pub mod telemetry;
pub mod watch;

pub use args::CommonArgs;
pub use runtime::{Runtime, main_with};
