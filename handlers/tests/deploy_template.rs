//! The deployment template's environment and the AWS wiring agree: every
//! variable the template gives a function is one the wiring reads, every one
//! the wiring needs is given to every function, and no function is given a
//! secret itself (only the name of the SSM parameter holding it).

use std::collections::BTreeSet;

const TEMPLATE: &str = include_str!("../../infra/deploy/template.yaml");
const WIRING: [&str; 3] = [
    include_str!("../src/runtime/aws.rs"),
    include_str!("../src/runtime/lambda.rs"),
    include_str!("../src/main.rs"),
];

/// `"JITR_…"` string literals in code (not comments).
fn read_by_the_wiring() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for source in WIRING {
        for line in source.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for piece in code.split('"').skip(1).step_by(2) {
                if piece.starts_with("JITR_")
                    && piece
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                {
                    names.insert(piece.to_owned());
                }
            }
        }
    }
    names
}

/// Each function's environment: its logical id and the variables it is given.
fn function_environments() -> Vec<(String, BTreeSet<String>)> {
    let mut functions = Vec::new();
    let mut current: Option<(String, BTreeSet<String>)> = None;
    let mut in_variables = false;
    for line in TEMPLATE.lines() {
        if line.starts_with("  ") && !line.starts_with("   ") && line.trim_end().ends_with(':') {
            functions.extend(current.take());
            let id = line.trim().trim_end_matches(':').to_owned();
            current = id.ends_with("Function").then(|| (id, BTreeSet::new()));
            in_variables = false;
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("Variables:") {
            in_variables = true;
            continue;
        }
        if let (Some((_, vars)), true) = (current.as_mut(), in_variables) {
            match trimmed.split_once(':') {
                Some((name, _)) if name.starts_with("JITR_") => {
                    vars.insert(name.to_owned());
                }
                _ => in_variables = false,
            }
        }
    }
    functions.extend(current);
    functions
}

#[test]
fn every_variable_the_template_passes_is_read_and_every_needed_one_passed() {
    let read = read_by_the_wiring();
    let functions = function_environments();
    assert_eq!(
        functions.len(),
        8,
        "one function per handler: {functions:?}"
    );
    let needed = [
        "JITR_PREFIX",
        "JITR_GITHUB_APP_ID",
        "JITR_GITHUB_PRIVATE_KEY_PARAMETER",
        "JITR_WEBHOOK_SECRET_PARAMETER",
        "JITR_SSM_PREFIX",
        "JITR_INSTANCE_PROFILE",
        "JITR_SECURITY_GROUPS",
        "JITR_SUBNETS",
    ];
    for (function, vars) in &functions {
        for var in vars {
            assert!(
                read.contains(var),
                "{function} is given {var}, which the wiring never reads"
            );
        }
        for var in needed {
            assert!(vars.contains(var), "{function} lacks {var}");
        }
        // Secrets by name only.
        for secret in ["JITR_WEBHOOK_SECRET", "JITR_GITHUB_PRIVATE_KEY"] {
            assert!(
                !vars.contains(secret),
                "{function} is given {secret} in clear"
            );
        }
    }
}
