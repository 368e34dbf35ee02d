//! IAM as AWS evaluates it. The AWS requests a process made (recorded by the
//! SDK clients' interceptor, `JITR_RECORD_AWS_CALLS`, or by a proxy in front of
//! the AWS CLI) become the authorisation requests AWS evaluates for them — the
//! action, the resource ARN, the condition keys AWS supplies — as the Service
//! Authorization Reference and each service's IAM guide document them, and are
//! evaluated against a role of the deployment template by
//! `@cloud-copilot/iam-simulate` (`handlers/tests/iam/evaluate.mjs`).
//!
//! What a request implies beyond itself is modelled too: a RunInstances is
//! authorised on every resource it uses or creates, tags it at creation
//! (`ec2:CreateTags` with `ec2:CreateAction`), passes the instance profile's
//! role (`iam:PassRole`); a SecureString read or write is a KMS call SSM makes
//! with the caller's credentials (`kms:ViaService`, the parameter's ARN as
//! encryption context) under the parameter's key and that key's policy.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// The account moto answers as.
pub const ACCOUNT: &str = "123456789012";
/// The region the tests run in.
pub const REGION: &str = "us-east-1";
/// The key id standing for the account's AWS managed key `aws/ssm`.
const AWS_SSM_KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/aws-ssm-managed-key";

/// One recorded AWS request.
#[derive(Debug, Clone)]
pub struct Call {
    pub service: String,
    pub operation: String,
    pub uri: String,
    pub body: Option<String>,
}

impl Call {
    /// The calls of a recording, one JSON line each.
    pub fn read_all(recording: &str) -> Vec<Call> {
        recording
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a recorded call ({e}): {line}"));
                Call {
                    service: v["service"].as_str().unwrap_or_default().to_owned(),
                    operation: v["operation"].as_str().unwrap_or_default().to_owned(),
                    uri: v["uri"].as_str().unwrap_or_default().to_owned(),
                    body: v["body"].as_str().map(str::to_owned),
                }
            })
            .collect()
    }

    fn json(&self) -> Value {
        self.body
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null)
    }

    /// A query-protocol body (EC2) as its parameters.
    fn form(&self) -> BTreeMap<String, String> {
        self.body
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect()
    }

    /// `Service Operation`, with the first name it acts on.
    pub fn describe(&self) -> String {
        let body = self.json();
        let subject = ["Name", "QueueUrl", "QueueName", "TableName", "StreamArn"]
            .iter()
            .find_map(|k| body[*k].as_str().map(str::to_owned))
            .or_else(|| {
                let form = self.form();
                ["InstanceId.1", "ImageId", "ResourceId.1"]
                    .iter()
                    .find_map(|k| form.get(*k).cloned())
            })
            .unwrap_or_default();
        format!("{} {} {subject}", self.service, self.operation)
            .trim_end()
            .to_owned()
    }
}

/// A `application/x-www-form-urlencoded` component, decoded.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An SSM parameter as the evaluation needs it.
#[derive(Debug, Clone, Default)]
pub struct Parameter {
    /// Its KMS key id or ARN; `None` for a String parameter.
    pub key: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// What AWS knows when it evaluates a request and the request does not say:
/// resources' tags, parameters' keys, instance profiles' roles, the calling
/// instance.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub instance_tags: HashMap<String, BTreeMap<String, String>>,
    pub parameters: HashMap<String, Parameter>,
    /// Instance profile (ARN or name) → its role's ARN.
    pub profiles: HashMap<String, String>,
    /// `ec2:SourceInstanceARN`, when the caller is an instance's role.
    pub source_instance: Option<String>,
    /// The archive's bucket: an S3 request's serialized path names only the
    /// key when the bucket goes in the host.
    pub archive_bucket: Option<String>,
}

/// One authorisation request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The role's logical id in the template.
    pub role: String,
    pub action: String,
    pub resource: String,
    pub context: BTreeMap<String, Value>,
    pub resource_policy: Option<Value>,
    /// The recorded call it comes from.
    pub call: String,
}

fn arn(service: &str, resource: &str) -> String {
    format!("arn:aws:{service}:{REGION}:{ACCOUNT}:{resource}")
}

/// The ARN of SSM parameter `name` (public parameters have no account).
pub fn parameter_arn(name: &str) -> String {
    if name.starts_with("arn:") {
        return name.to_owned();
    }
    let path = name.trim_start_matches('/');
    if path.starts_with("aws/service/") {
        format!("arn:aws:ssm:{REGION}::parameter/{path}")
    } else {
        arn("ssm", &format!("parameter/{path}"))
    }
}

fn queue_arn(url_or_name: &str) -> String {
    let name = url_or_name.rsplit('/').next().unwrap_or(url_or_name);
    arn("sqs", name)
}

fn table_arn(name: &str) -> String {
    if name.starts_with("arn:") {
        name.to_owned()
    } else {
        arn("dynamodb", &format!("table/{name}"))
    }
}

fn tag_context(prefix: &str, tags: &BTreeMap<String, String>) -> BTreeMap<String, Value> {
    tags.iter()
        .map(|(k, v)| (format!("{prefix}{k}"), json!(v)))
        .collect()
}

fn request_tags(tags: &BTreeMap<String, String>) -> BTreeMap<String, Value> {
    let mut context = tag_context("aws:RequestTag/", tags);
    if !tags.is_empty() {
        context.insert("aws:TagKeys".into(), json!(tags.keys().collect::<Vec<_>>()));
    }
    context
}

/// The policy of the key a parameter is encrypted under: `aws/ssm`'s (any
/// principal of the account, through SSM), or KMS's default key policy for a
/// customer managed key (the account's IAM policies decide).
fn key_policy(key: &str) -> Value {
    if key == AWS_SSM_KEY {
        json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "Allow access through SSM for all principals in the account that are authorized to use SSM",
                "Effect": "Allow",
                "Principal": {"AWS": "*"},
                "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey"],
                "Resource": "*",
                "Condition": {"StringEquals": {
                    "kms:CallerAccount": ACCOUNT,
                    "kms:ViaService": format!("ssm.{REGION}.amazonaws.com")
                }}
            }]
        })
    } else {
        json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
                "Action": "kms:*",
                "Resource": "*"
            }]
        })
    }
}

fn key_arn(key: &str) -> String {
    match key {
        "" | "alias/aws/ssm" => AWS_SSM_KEY.to_owned(),
        k if k.starts_with("arn:") => k.to_owned(),
        k => arn("kms", &format!("key/{k}")),
    }
}

impl Facts {
    /// Updates what is known from a call that changes it (a parameter written
    /// or tagged), after the call's own requests were derived.
    fn learn(&mut self, call: &Call) {
        let body = call.json();
        match (call.service.as_str(), call.operation.as_str()) {
            ("SSM", "PutParameter") => {
                let name = body["Name"].as_str().unwrap_or_default().to_owned();
                let entry = self.parameters.entry(name).or_default();
                if body["Type"] == "SecureString" {
                    entry.key = Some(key_arn(body["KeyId"].as_str().unwrap_or_default()));
                }
                entry.tags.extend(tags_of(&body["Tags"]));
            }
            ("SSM", "AddTagsToResource") => {
                let name = body["ResourceId"].as_str().unwrap_or_default().to_owned();
                self.parameters
                    .entry(name)
                    .or_default()
                    .tags
                    .extend(tags_of(&body["Tags"]));
            }
            _ => {}
        }
    }
}

fn tags_of(tags: &Value) -> BTreeMap<String, String> {
    tags.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t["Key"].as_str()?.to_owned(),
                t["Value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The authorisation requests of every call `role` made, in order.
pub fn requests_of(role: &str, calls: &[Call], facts: &mut Facts) -> Vec<Request> {
    let mut all = Vec::new();
    for call in calls {
        all.extend(requests(role, call, facts));
        facts.learn(call);
    }
    all
}

/// The authorisation requests AWS evaluates for `call` made by `role`.
pub fn requests(role: &str, call: &Call, facts: &Facts) -> Vec<Request> {
    let mut out = Vec::new();
    let mut keys = Vec::new();
    let mut add = |action: &str, resource: String, context: BTreeMap<String, Value>| {
        out.push(Request {
            role: role.to_owned(),
            action: action.to_owned(),
            resource,
            context,
            resource_policy: None,
            call: call.describe(),
        });
    };
    let body = call.json();
    let op = call.operation.as_str();
    match call.service.as_str() {
        "SQS" => {
            let action = match op {
                "SendMessageBatch" => "SendMessage",
                "DeleteMessageBatch" => "DeleteMessage",
                "ChangeMessageVisibilityBatch" => "ChangeMessageVisibility",
                other => other,
            };
            let queue = body["QueueUrl"]
                .as_str()
                .or(body["QueueName"].as_str())
                .unwrap_or_else(|| panic!("{}: no queue", call.describe()));
            add(&format!("sqs:{action}"), queue_arn(queue), BTreeMap::new());
        }
        "DynamoDB" | "DynamoDB Streams" => match op {
            "TransactWriteItems" | "TransactGetItems" => {
                for item in body["TransactItems"].as_array().into_iter().flatten() {
                    let (kind, detail) = item
                        .as_object()
                        .and_then(|o| o.iter().next())
                        .expect("a transaction item");
                    let action = match kind.as_str() {
                        "Put" => "PutItem",
                        "Update" => "UpdateItem",
                        "Delete" => "DeleteItem",
                        "ConditionCheck" => "ConditionCheckItem",
                        "Get" => "GetItem",
                        other => panic!("transaction item {other}"),
                    };
                    let table = detail["TableName"].as_str().expect("an item's table");
                    add(
                        &format!("dynamodb:{action}"),
                        table_arn(table),
                        BTreeMap::new(),
                    );
                }
            }
            "BatchWriteItem" | "BatchGetItem" => {
                for table in body["RequestItems"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(t, _)| t)
                {
                    add(&format!("dynamodb:{op}"), table_arn(table), BTreeMap::new());
                }
            }
            "DescribeStream" | "GetRecords" | "GetShardIterator" => {
                let stream = body["StreamArn"].as_str().or_else(|| {
                    // A shard iterator names its stream's ARN first.
                    body["ShardIterator"]
                        .as_str()
                        .and_then(|i| i.split('|').next())
                });
                add(
                    &format!("dynamodb:{op}"),
                    stream.unwrap_or("*").to_owned(),
                    BTreeMap::new(),
                );
            }
            "ListStreams" | "ListTables" => {
                add(&format!("dynamodb:{op}"), "*".into(), BTreeMap::new())
            }
            _ => {
                let table = body["TableName"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: no table", call.describe()));
                let resource = match body["IndexName"].as_str() {
                    Some(index) => format!("{}/index/{index}", table_arn(table)),
                    None => table_arn(table),
                };
                add(&format!("dynamodb:{op}"), resource, BTreeMap::new());
            }
        },
        "SSM" => {
            let names: Vec<String> = match op {
                "GetParameters" | "DeleteParameters" => body["Names"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect(),
                "AddTagsToResource" | "ListTagsForResource" | "RemoveTagsFromResource" => {
                    vec![body["ResourceId"].as_str().unwrap_or_default().to_owned()]
                }
                "DescribeParameters" => Vec::new(),
                _ => vec![body["Name"].as_str().unwrap_or_default().to_owned()],
            };
            if op == "DescribeParameters" {
                add("ssm:DescribeParameters", "*".into(), BTreeMap::new());
            }
            let caller_instance = facts
                .source_instance
                .iter()
                .map(|i| ("ec2:SourceInstanceARN".to_owned(), json!(i)))
                .collect::<BTreeMap<_, _>>();
            for name in names {
                let known = facts.parameters.get(&name).cloned().unwrap_or_default();
                let resource = parameter_arn(&name);
                let mut context = tag_context("ssm:resourceTag/", &known.tags);
                context.extend(caller_instance.clone());
                let new_tags = tags_of(&body["Tags"]);
                let mut own = context.clone();
                if op == "AddTagsToResource" || op == "PutParameter" {
                    own.extend(request_tags(&new_tags));
                }
                add(&format!("ssm:{op}"), resource.clone(), own);
                // Tags given with a new parameter are added with the caller's
                // ssm:AddTagsToResource (the PutParameter API reference).
                if op == "PutParameter" && !new_tags.is_empty() {
                    let mut tagging = context.clone();
                    tagging.extend(request_tags(&new_tags));
                    add("ssm:AddTagsToResource", resource.clone(), tagging);
                }
                // SSM calls KMS with the caller's credentials for a SecureString.
                let kms = match op {
                    "GetParameter" | "GetParameters" if body["WithDecryption"] == true => {
                        known.key.as_deref().map(|k| (key_arn(k), "kms:Decrypt"))
                    }
                    "PutParameter" if body["Type"] == "SecureString" => Some((
                        key_arn(body["KeyId"].as_str().unwrap_or_default()),
                        if body["Tier"] == "Advanced" {
                            "kms:GenerateDataKey"
                        } else {
                            "kms:Encrypt"
                        },
                    )),
                    _ => None,
                };
                if let Some((key, action)) = kms {
                    let mut kms_context = BTreeMap::from([
                        (
                            "kms:ViaService".to_owned(),
                            json!(format!("ssm.{REGION}.amazonaws.com")),
                        ),
                        ("kms:CallerAccount".to_owned(), json!(ACCOUNT)),
                        (
                            "kms:EncryptionContext:PARAMETER_ARN".to_owned(),
                            json!(resource),
                        ),
                    ]);
                    kms_context.extend(caller_instance.clone());
                    keys.push(Request {
                        role: role.to_owned(),
                        action: action.to_owned(),
                        resource: key.clone(),
                        context: kms_context,
                        resource_policy: Some(key_policy(&key)),
                        call: call.describe(),
                    });
                }
            }
        }
        "EC2" => ec2_requests(call, facts, &mut add),
        "EventBridge" => {
            for entry in body["Entries"].as_array().into_iter().flatten() {
                let bus = entry["EventBusName"].as_str().unwrap_or("default");
                let resource = if bus.starts_with("arn:") {
                    bus.to_owned()
                } else {
                    arn("events", &format!("event-bus/{bus}"))
                };
                let mut context = BTreeMap::new();
                if let Some(source) = entry["Source"].as_str() {
                    context.insert("events:source".into(), json!(source));
                }
                if let Some(kind) = entry["DetailType"].as_str() {
                    context.insert("events:detail-type".into(), json!(kind));
                }
                add(&format!("events:{op}"), resource, context);
            }
        }
        "CloudWatch" => add(&format!("cloudwatch:{op}"), "*".into(), BTreeMap::new()),
        "S3" => {
            let bucket = facts.archive_bucket.as_deref().unwrap_or_else(|| {
                panic!("{}: which bucket (Facts::archive_bucket)", call.describe())
            });
            let (path, query) = call.uri.split_once('?').unwrap_or((&call.uri, ""));
            let path = path.trim_start_matches('/');
            let key = path
                .strip_prefix(bucket)
                .map_or(path, |k| k.trim_start_matches('/'));
            match op {
                "PutObject" | "GetObject" => add(
                    &format!("s3:{op}"),
                    format!("arn:aws:s3:::{bucket}/{}", decode(key)),
                    BTreeMap::new(),
                ),
                "ListObjectsV2" => {
                    let prefix = query
                        .split('&')
                        .find_map(|p| p.strip_prefix("prefix="))
                        .map(decode)
                        .unwrap_or_default();
                    add(
                        "s3:ListBucket",
                        format!("arn:aws:s3:::{bucket}"),
                        BTreeMap::from([("s3:prefix".to_owned(), json!(prefix))]),
                    )
                }
                other => panic!("{}: S3 {other} is not modelled", call.describe()),
            }
        }
        other => panic!(
            "{}: the IAM evaluation does not model {other} yet: add it to support/iam.rs",
            call.describe()
        ),
    }
    out.extend(keys);
    out
}

fn ec2_requests(
    call: &Call,
    facts: &Facts,
    add: &mut impl FnMut(&str, String, BTreeMap<String, Value>),
) {
    let form = call.form();
    let op = call.operation.as_str();
    let indexed = |prefix: &str| -> Vec<String> {
        (1..)
            .map_while(|i| form.get(&format!("{prefix}.{i}")).cloned())
            .collect()
    };
    let instance_arn = |id: &str| arn("ec2", &format!("instance/{id}"));
    let resource_tags = |id: &str| -> BTreeMap<String, Value> {
        let tags = facts.instance_tags.get(id).cloned().unwrap_or_default();
        let mut context = tag_context("aws:ResourceTag/", &tags);
        context.extend(tag_context("ec2:ResourceTag/", &tags));
        context
    };
    match op {
        "RunInstances" => {
            // The tags of each TagSpecification, by resource type.
            let mut specified: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for i in 1.. {
                let Some(kind) = form.get(&format!("TagSpecification.{i}.ResourceType")) else {
                    break;
                };
                let tags = (1..)
                    .map_while(|j| {
                        let key = form.get(&format!("TagSpecification.{i}.Tag.{j}.Key"))?;
                        let value = form
                            .get(&format!("TagSpecification.{i}.Tag.{j}.Value"))
                            .cloned()
                            .unwrap_or_default();
                        Some((key.clone(), value))
                    })
                    .collect();
                specified.insert(kind.clone(), tags);
            }
            let created =
                |kind: &str| request_tags(&specified.get(kind).cloned().unwrap_or_default());
            let spot = form
                .get("InstanceMarketOptions.MarketType")
                .map(String::as_str)
                == Some("spot");
            let profile = form
                .get("IamInstanceProfile.Arn")
                .or(form.get("IamInstanceProfile.Name"))
                .cloned();
            let mut instance = created("instance");
            if let Some(t) = form.get("InstanceType") {
                instance.insert("ec2:InstanceType".into(), json!(t));
            }
            instance.insert(
                "ec2:InstanceMarketType".into(),
                json!(if spot { "spot" } else { "on-demand" }),
            );
            if let Some(tokens) = form.get("MetadataOptions.HttpTokens") {
                instance.insert("ec2:MetadataHttpTokens".into(), json!(tokens));
            }
            if let Some(p) = &profile {
                let profile_arn = if p.starts_with("arn:") {
                    p.clone()
                } else {
                    format!("arn:aws:iam::{ACCOUNT}:instance-profile/{p}")
                };
                instance.insert("ec2:InstanceProfile".into(), json!(profile_arn));
            }
            add("ec2:RunInstances", arn("ec2", "instance/*"), instance);
            let image = form.get("ImageId").expect("RunInstances names its image");
            add(
                "ec2:RunInstances",
                format!("arn:aws:ec2:{REGION}::image/{image}"),
                BTreeMap::new(),
            );
            let subnet = form
                .get("SubnetId")
                .or(form.get("NetworkInterface.1.SubnetId"))
                .cloned()
                .unwrap_or_else(|| "subnet-default".into());
            add(
                "ec2:RunInstances",
                arn("ec2", &format!("subnet/{subnet}")),
                BTreeMap::new(),
            );
            add(
                "ec2:RunInstances",
                arn("ec2", "network-interface/*"),
                created("network-interface"),
            );
            let mut groups = indexed("SecurityGroupId");
            groups.extend(indexed("NetworkInterface.1.SecurityGroupId"));
            if groups.is_empty() {
                groups.push("sg-default".into());
            }
            for group in groups {
                add(
                    "ec2:RunInstances",
                    arn("ec2", &format!("security-group/{group}")),
                    BTreeMap::new(),
                );
            }
            add(
                "ec2:RunInstances",
                arn("ec2", "volume/*"),
                created("volume"),
            );
            if let Some(key) = form.get("KeyName") {
                add(
                    "ec2:RunInstances",
                    arn("ec2", &format!("key-pair/{key}")),
                    BTreeMap::new(),
                );
            }
            if let Some(template) = form
                .get("LaunchTemplate.LaunchTemplateId")
                .or(form.get("LaunchTemplate.LaunchTemplateName"))
            {
                add(
                    "ec2:RunInstances",
                    arn("ec2", &format!("launch-template/{template}")),
                    BTreeMap::new(),
                );
            }
            if spot {
                add(
                    "ec2:RunInstances",
                    arn("ec2", "spot-instances-request/*"),
                    created("spot-instances-request"),
                );
            }
            // Tagging at launch is authorised as ec2:CreateTags on each
            // tagged resource, with the launch as its creating action.
            for (kind, tags) in &specified {
                let mut context = request_tags(tags);
                context.insert("ec2:CreateAction".into(), json!("RunInstances"));
                add("ec2:CreateTags", arn("ec2", &format!("{kind}/*")), context);
            }
            if let Some(p) = profile {
                let role = facts
                    .profiles
                    .get(&p)
                    .unwrap_or_else(|| panic!("instance profile {p}: its role is not known"));
                add(
                    "iam:PassRole",
                    role.clone(),
                    BTreeMap::from([(
                        "iam:PassedToService".to_owned(),
                        json!("ec2.amazonaws.com"),
                    )]),
                );
            }
        }
        "TerminateInstances" | "StopInstances" | "StartInstances" | "RebootInstances"
        | "GetConsoleOutput" => {
            let mut ids = indexed("InstanceId");
            if let Some(id) = form.get("InstanceId") {
                ids.push(id.clone());
            }
            for id in ids {
                add(&format!("ec2:{op}"), instance_arn(&id), resource_tags(&id));
            }
        }
        "CreateTags" | "DeleteTags" => {
            let tags: BTreeMap<String, String> = (1..)
                .map_while(|j| {
                    let key = form.get(&format!("Tag.{j}.Key"))?;
                    Some((
                        key.clone(),
                        form.get(&format!("Tag.{j}.Value"))
                            .cloned()
                            .unwrap_or_default(),
                    ))
                })
                .collect();
            for id in indexed("ResourceId") {
                let kind = match id.split('-').next() {
                    Some("i") => "instance",
                    Some("vol") => "volume",
                    Some("sir") => "spot-instances-request",
                    Some("eni") => "network-interface",
                    _ => panic!(
                        "{}: a resource id the evaluation does not know: {id}",
                        call.describe()
                    ),
                };
                let mut context = if kind == "instance" {
                    resource_tags(&id)
                } else {
                    BTreeMap::new()
                };
                context.extend(request_tags(&tags));
                add(
                    &format!("ec2:{op}"),
                    arn("ec2", &format!("{kind}/{id}")),
                    context,
                );
            }
        }
        op if op.starts_with("Describe") => add(&format!("ec2:{op}"), "*".into(), BTreeMap::new()),
        other => panic!(
            "EC2 {other}: the IAM evaluation does not model it yet: add it to support/iam.rs"
        ),
    }
}

/// One request's decision.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub request: Request,
    /// `Allowed`, `ImplicitlyDenied`, `ExplicitlyDenied`, or `Error`.
    pub decision: String,
    /// Condition keys the evaluator did not accept for the action.
    pub ignored: Vec<String>,
    pub error: Option<String>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.decision == "Allowed"
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.request;
        write!(
            f,
            "{}: {} {} on {} ({}; context {})",
            r.role,
            self.decision,
            r.action,
            r.resource,
            r.call,
            serde_json::to_string(&r.context).unwrap_or_default()
        )?;
        if let Some(e) = &self.error {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

/// The workspace's root (every crate including this module is one below it).
fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("a workspace member")
        .to_path_buf()
}

/// The evaluator's directory, with its dependencies installed (`npm ci`).
fn evaluator() -> PathBuf {
    let dir = workspace().join("handlers/tests/iam");
    assert!(
        dir.join("node_modules/@cloud-copilot/iam-simulate")
            .exists(),
        "the IAM evaluator is not installed: `npm ci --prefix {}` (bash .ci/run does it)",
        dir.display()
    );
    dir
}

/// Evaluates `requests` against the template's roles, the stack given
/// `parameters` and the physical `attributes` the template cannot know.
pub fn evaluate(
    parameters: &[(&str, &str)],
    attributes: &[(&str, &str)],
    requests: &[Request],
) -> Vec<Verdict> {
    let dir = evaluator();
    let template = workspace().join("infra/deploy/template.yaml");
    let input = json!({
        "template": template,
        "parameters": parameters.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "attributes": attributes.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "account": ACCOUNT,
        "region": REGION,
        "requests": requests.iter().map(|r| json!({
            "role": r.role,
            "action": r.action,
            "resource": r.resource,
            "context": r.context,
            "resourcePolicy": r.resource_policy,
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(std::env::var("JITR_TEST_NODE").unwrap_or_else(|_| "node".into()))
        .arg(dir.join("evaluate.mjs"))
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (Node.js 20 or later) for the IAM evaluator");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.to_string().as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the IAM evaluator failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<Value> = serde_json::from_slice(&output.stdout).expect("the evaluator's JSON");
    assert_eq!(answers.len(), requests.len());
    requests
        .iter()
        .zip(answers)
        .map(|(request, answer)| Verdict {
            request: request.clone(),
            decision: answer["decision"].as_str().unwrap_or("Error").to_owned(),
            ignored: answer["ignored"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect(),
            error: answer["error"].as_str().map(str::to_owned),
        })
        .collect()
}

/// Panics, naming every one, unless every request is allowed and every
/// condition key it carries is one AWS supplies for its action.
pub fn assert_all_allowed(verdicts: &[Verdict]) {
    let denied: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.allowed())
        .map(|v| v.to_string())
        .collect();
    let unknown: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.ignored.is_empty())
        .map(|v| format!("{v}: keys not supplied for this action: {:?}", v.ignored))
        .collect();
    assert!(
        denied.is_empty() && unknown.is_empty(),
        "{} of {} requests denied as AWS evaluates them:\n  {}\n{}",
        denied.len(),
        verdicts.len(),
        denied.join("\n  "),
        unknown.join("\n")
    );
}
