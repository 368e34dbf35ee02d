//! IAM policy documents, read as IAM reads them for the questions `jitr doctor`
//! asks of a deployment: may this role pass that role to EC2, and does that
//! role trust EC2. Follows the IAM User Guide's "Policy evaluation logic" for
//! identity policies in one account: an explicit `Deny` wins, then an `Allow`,
//! otherwise the request is implicitly denied. Permission boundaries, SCPs and
//! session policies are not visible from a role's own policies and are not
//! judged.

use serde_json::Value;
use thiserror::Error;

/// A policy document that is not IAM's JSON.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("policy document: {0}")]
pub struct PolicyError(String);

/// One policy document (identity or trust policy).
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyDocument {
    /// Where it came from (`inline NAME`, `managed ARN`), for messages.
    pub source: String,
    statements: Vec<Value>,
}

/// What a set of policies says of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An `Allow` statement matches with its conditions met, and no `Deny` does.
    Allowed,
    /// A `Deny` statement matches (its source given).
    Denied(String),
    /// Only statements whose conditions cannot be judged from the request's
    /// context would allow it (the conditions given).
    Conditional(String),
    /// No statement allows it: implicitly denied.
    NotAllowed,
}

/// Whether a statement applies to the request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Applies {
    Yes,
    No,
    Unknown(String),
}

impl PolicyDocument {
    /// Parses a document as IAM returns it: JSON, or JSON URL-encoded (RFC
    /// 3986), as `GetRolePolicy`, `GetPolicyVersion` and `GetRole` return it.
    pub fn parse(source: impl Into<String>, text: &str) -> Result<Self, PolicyError> {
        let trimmed = text.trim();
        let json = if trimmed.starts_with('{') {
            trimmed.to_owned()
        } else {
            percent_encoding::percent_decode_str(trimmed)
                .decode_utf8()
                .map_err(|e| PolicyError(format!("not UTF-8 once decoded: {e}")))?
                .into_owned()
        };
        let value: Value =
            serde_json::from_str(&json).map_err(|e| PolicyError(format!("not JSON: {e}")))?;
        let statements = match value.get("Statement") {
            Some(Value::Array(list)) => list.clone(),
            Some(one @ Value::Object(_)) => vec![one.clone()],
            _ => return Err(PolicyError("no Statement".into())),
        };
        Ok(PolicyDocument {
            source: source.into(),
            statements,
        })
    }

    /// Whether this trust policy lets `service` (e.g. `ec2.amazonaws.com`)
    /// assume the role, unconditionally.
    pub fn trusts_service(&self, service: &str) -> bool {
        let mut allowed = false;
        for statement in &self.statements {
            let principal = statement
                .get("Principal")
                .and_then(|p| p.get("Service"))
                .map(strings)
                .unwrap_or_default();
            if !principal.iter().any(|p| p == service)
                || !patterns_match(statement.get("Action"), "sts:AssumeRole", false)
            {
                continue;
            }
            match statement.get("Effect").and_then(Value::as_str) {
                Some("Deny") => return false,
                Some("Allow") if statement.get("Condition").is_none() => allowed = true,
                _ => {}
            }
        }
        allowed
    }

    fn applies(
        statement: &Value,
        action: &str,
        resource: &str,
        context: &[(&str, &str)],
    ) -> Applies {
        let action_matches = match (statement.get("Action"), statement.get("NotAction")) {
            (Some(a), _) => patterns_match(Some(a), action, false),
            (None, Some(n)) => !patterns_match(Some(n), action, false),
            (None, None) => false,
        };
        let resource_matches = match (statement.get("Resource"), statement.get("NotResource")) {
            (Some(r), _) => patterns_match(Some(r), resource, true),
            (None, Some(n)) => !patterns_match(Some(n), resource, true),
            (None, None) => false,
        };
        if !action_matches || !resource_matches {
            return Applies::No;
        }
        match statement.get("Condition") {
            None => Applies::Yes,
            Some(condition) => conditions_hold(condition, context),
        }
    }
}

/// What `documents` (one principal's identity policies) say of `action` on
/// `resource`, given the request's condition keys in `context`.
pub fn decide(
    documents: &[PolicyDocument],
    action: &str,
    resource: &str,
    context: &[(&str, &str)],
) -> Decision {
    let mut allowed = false;
    let mut conditional = Vec::new();
    for document in documents {
        for statement in &document.statements {
            let applies = PolicyDocument::applies(statement, action, resource, context);
            match (statement.get("Effect").and_then(Value::as_str), applies) {
                (Some("Deny"), Applies::Yes) => {
                    return Decision::Denied(document.source.clone());
                }
                (Some("Allow"), Applies::Yes) => allowed = true,
                (Some("Allow"), Applies::Unknown(why)) => {
                    conditional.push(format!("{}: {why}", document.source));
                }
                // A Deny under conditions this request may meet is not judged
                // here: it cannot turn an implicit deny into an allow.
                _ => {}
            }
        }
    }
    if allowed {
        Decision::Allowed
    } else if !conditional.is_empty() {
        Decision::Conditional(conditional.join("; "))
    } else {
        Decision::NotAllowed
    }
}

/// The strings of a string-or-array value.
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn patterns_match(patterns: Option<&Value>, value: &str, case_sensitive: bool) -> bool {
    patterns.map(strings).unwrap_or_default().iter().any(|p| {
        if case_sensitive {
            glob(p, value)
        } else {
            glob(&p.to_ascii_lowercase(), &value.to_ascii_lowercase())
        }
    })
}

/// IAM's wildcards: `*` any run of characters, `?` one character.
fn glob(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Judges a `Condition` block: every operator, every key must hold. Keys absent
/// from `context`, and operators other than the string ones, cannot be judged.
fn conditions_hold(condition: &Value, context: &[(&str, &str)]) -> Applies {
    let Some(operators) = condition.as_object() else {
        return Applies::Unknown("an unreadable Condition".into());
    };
    for (operator, keys) in operators {
        let Some(keys) = keys.as_object() else {
            return Applies::Unknown(format!("{operator} without keys"));
        };
        let (base, if_exists) = match operator.strip_suffix("IfExists") {
            Some(base) => (base, true),
            None => (operator.as_str(), false),
        };
        for (key, expected) in keys {
            let actual = context
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| *v);
            let Some(actual) = actual else {
                if if_exists {
                    continue;
                }
                return Applies::Unknown(format!("{operator} on {key}"));
            };
            let expected = strings(expected);
            let holds = match base {
                "StringEquals" => expected.iter().any(|e| e == actual),
                "StringNotEquals" => expected.iter().all(|e| e != actual),
                "StringEqualsIgnoreCase" => expected.iter().any(|e| e.eq_ignore_ascii_case(actual)),
                "StringLike" => expected.iter().any(|e| glob(e, actual)),
                "StringNotLike" => expected.iter().all(|e| !glob(e, actual)),
                _ => return Applies::Unknown(format!("{operator} on {key}")),
            };
            if !holds {
                return Applies::No;
            }
        }
    }
    Applies::Yes
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNER: &str = "arn:aws:iam::123456789012:role/jitr-runner";
    const TO_EC2: &[(&str, &str)] = &[("iam:PassedToService", "ec2.amazonaws.com")];

    fn doc(json: &str) -> PolicyDocument {
        PolicyDocument::parse("test", json).unwrap()
    }

    #[test]
    fn the_templates_pass_role_statement_allows_passing_the_runner_role_to_ec2_only() {
        let policy = doc(&format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"iam:PassRole",
            "Resource":"{RUNNER}","Condition":{{"StringEquals":{{"iam:PassedToService":"ec2.amazonaws.com"}}}}}}]}}"#
        ));
        assert_eq!(
            decide(
                std::slice::from_ref(&policy),
                "iam:PassRole",
                RUNNER,
                TO_EC2
            ),
            Decision::Allowed
        );
        let other = "arn:aws:iam::123456789012:role/admin";
        assert_eq!(
            decide(std::slice::from_ref(&policy), "iam:PassRole", other, TO_EC2),
            Decision::NotAllowed
        );
        let to_lambda = &[("iam:PassedToService", "lambda.amazonaws.com")];
        assert_eq!(
            decide(
                std::slice::from_ref(&policy),
                "iam:PassRole",
                RUNNER,
                to_lambda
            ),
            Decision::NotAllowed
        );
        assert!(matches!(
            decide(&[policy], "iam:PassRole", RUNNER, &[]),
            Decision::Conditional(why) if why.contains("iam:PassedToService")
        ));
    }

    #[test]
    fn wildcards_deny_and_not_action_are_read_as_iam_reads_them() {
        let wide = doc(
            r#"{"Statement":{"Effect":"Allow","Action":"IAM:Pass*","Resource":"arn:aws:iam::*:role/jitr-*"}}"#,
        );
        assert_eq!(
            decide(std::slice::from_ref(&wide), "iam:PassRole", RUNNER, &[]),
            Decision::Allowed
        );
        let deny = doc(r#"{"Statement":[{"Effect":"Deny","NotAction":"ec2:*","Resource":"*"}]}"#);
        assert_eq!(
            decide(&[wide.clone(), deny], "iam:PassRole", RUNNER, &[]),
            Decision::Denied("test".into())
        );
        let case = doc(
            r#"{"Statement":[{"Effect":"Allow","Action":"iam:PassRole","Resource":"arn:aws:iam::123456789012:role/JITR-runner"}]}"#,
        );
        assert_eq!(
            decide(&[case], "iam:PassRole", RUNNER, &[]),
            Decision::NotAllowed
        );
        assert!(glob("a?c*", "abcdef") && !glob("a?c", "abcd") && glob("*", ""));
    }

    #[test]
    fn documents_come_url_encoded_from_iam_and_trust_policies_name_their_service() {
        let encoded = "%7B%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B%22Service%22%3A%5B%22ec2.amazonaws.com%22%5D%7D%2C%22Action%22%3A%22sts%3AAssumeRole%22%7D%5D%7D";
        let trust = PolicyDocument::parse("trust", encoded).unwrap();
        assert!(trust.trusts_service("ec2.amazonaws.com"));
        assert!(!trust.trusts_service("lambda.amazonaws.com"));
        assert!(PolicyDocument::parse("x", "%7Bnope").is_err());
        assert!(PolicyDocument::parse("x", r#"{"Version":"2012-10-17"}"#).is_err());
    }
}
