//! The `jitr` binary against moto: `AWS_ENDPOINT_URL` (`.ci/run` starts moto
//! and sets it), test credentials, one resource prefix per test.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::process::{Command, Output};

/// moto's endpoint.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL must point at moto: run `bash .ci/run`")
}

/// A resource prefix of this test process: `jitr-{name}-{pid}`.
pub fn prefix(name: &str) -> String {
    format!("jitr-{name}-{}", std::process::id())
}

/// `jitr ARGS --prefix PREFIX --endpoint ENDPOINT --region us-east-1` with
/// moto's credentials, not yet run.
pub fn jitr_at(prefix: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jitr"));
    command
        .args(args)
        .args(["--prefix", prefix, "--endpoint", &endpoint()])
        .args(["--region", "us-east-1"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    command
}

/// Runs [`jitr_at`].
pub fn jitr(prefix: &str, args: &[&str]) -> Output {
    jitr_at(prefix, args).output().expect("run jitr")
}
