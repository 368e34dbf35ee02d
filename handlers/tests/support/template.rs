//! Reading the deployment template (`infra/deploy/template.yaml`) the way the
//! tests need: resources by logical id, each function's environment and
//! handler, each role's allowed actions.

#![allow(dead_code)]

use std::collections::BTreeSet;

/// The template.
pub const TEMPLATE: &str = include_str!("../../../infra/deploy/template.yaml");

/// Each function's environment: its logical id and the variables it is given.
pub fn function_environments() -> Vec<(String, BTreeSet<String>)> {
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

/// A role's allowed actions in the template: its own statements and those of
/// the managed policies it attaches (by logical id), trust policies excluded.
pub fn role_actions(role: &str) -> BTreeSet<String> {
    let block = resource(role);
    let mut actions = statement_actions(&block);
    for line in block.lines() {
        for piece in line.split("!Ref ").skip(1) {
            let id: String = piece
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if id.ends_with("Policy") {
                actions.extend(statement_actions(&resource(&id)));
            }
        }
    }
    actions.remove("sts:AssumeRole");
    actions
}

/// The lines of resource `logical_id`.
pub fn resource(logical_id: &str) -> String {
    let header = format!("  {logical_id}:");
    let mut lines = TEMPLATE.lines().skip_while(|l| *l != header);
    assert!(lines.next().is_some(), "{logical_id} in the template");
    lines
        .take_while(|l| l.starts_with("   ") || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `Action:` of a block: a value, a `[list]`, or `- item` lines.
pub fn statement_actions(block: &str) -> BTreeSet<String> {
    let mut actions = BTreeSet::new();
    let mut listing: Option<usize> = None;
    for line in block.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if let Some(depth) = listing {
            match trimmed.strip_prefix("- ") {
                Some(item) if indent > depth => {
                    actions.insert(item.to_owned());
                    continue;
                }
                _ => listing = None,
            }
        }
        let Some(value) = trimmed.strip_prefix("Action:") else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            listing = Some(indent);
        } else {
            actions.extend(
                value
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty()),
            );
        }
    }
    actions
}

/// The variables the template gives the function running `handler`.
pub fn variables_of(handler: &str) -> BTreeSet<String> {
    let function = functions_by_handler()
        .into_iter()
        .find(|(h, _)| h == handler)
        .unwrap_or_else(|| panic!("no function runs {handler}"))
        .1;
    function_environments()
        .into_iter()
        .find(|(id, _)| *id == function)
        .map(|(_, vars)| vars)
        .unwrap_or_default()
}

/// The function whose `Handler` is `handler`, and its role's logical id.
pub fn role_of(handler: &str) -> String {
    let function = functions_by_handler()
        .into_iter()
        .find(|(h, _)| h == handler)
        .unwrap_or_else(|| panic!("no function runs {handler}"))
        .1;
    resource(&function)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Role: !GetAtt "))
        .and_then(|r| r.strip_suffix(".Arn"))
        .expect("a role")
        .to_owned()
}

pub fn functions_by_handler() -> Vec<(String, String)> {
    function_environments()
        .into_iter()
        .map(|(id, _)| {
            let handler = resource(&id)
                .lines()
                .find_map(|l| l.trim().strip_prefix("Handler: ").map(str::to_owned))
                .expect("a handler");
            (handler, id)
        })
        .collect()
}
