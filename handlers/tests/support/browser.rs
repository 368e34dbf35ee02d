//! Headless Chromium (Debian's package; `.ci/run` installs it,
//! `JITR_TEST_CHROMIUM` may name another) for tests that check pages as a
//! browser renders them.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Chromium to run.
pub fn chromium() -> String {
    std::env::var("JITR_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Chromium, headless, on `url`, with `what` (`--dump-dom` or
/// `--screenshot=FILE`). (Chromium's switch for scripts off also stops
/// `--dump-dom` and `--screenshot`: tests assert that pages carry no script
/// instead.)
pub fn browse(url: &str, what: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1280,1400",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(what)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: install Debian's chromium (`bash .ci/run` does)",
                chromium()
            )
        });
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where screenshots go: `TARGET/screenshots/` (CI keeps them as artifacts).
pub fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
