//! The production event log on DynamoDB: the same append contract as SQLite.
//!
//! One table (ADR-0003). Per runner stream: `HEAD` (version, status, folded state)
//! and `EV#<seq>` items. A global position counter item orders the feed; a sparse
//! GSI `feed` (`feed`, `pos`) serves `read_all`, `open-runners` (`open_flag`, `pk`)
//! the open streams, `by-instance` (`instance_id`) the instance look-up. An append is
//! one `TransactWriteItems`: HEAD under `version = :expected` and the rule that a
//! closed head needs `Terminated` (or no possible instance), the counter under its
//! old value, the command id under `attribute_not_exists`, each event likewise.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, Put, PutRequest, ScalarAttributeType, StreamSpecification,
    StreamViewType, TransactWriteItem, Update, WriteRequest,
};
use jitr_domain::{
    InstanceId, LaunchOutcome, RunnerEvent, RunnerState, StreamId, Timestamp, evolve, is_terminal,
};
use serde::{Deserialize, Serialize};

use crate::aws::error_code;
use jitr_infra::{
    AppendOutcome, Checkpoint, CheckpointStore, ClosedStream, CommandId, EVENT_SCHEMA, EventStore,
    ExpiringLog, Lease, OpenStreams, RecordedEvent, StoreError, StreamHead,
};

type Item = HashMap<String, AttributeValue>;

const HEAD: &str = "HEAD";
const FEED_PK: &str = "#feed";
const FEED_PARTITION: &str = "FEED";
const OPEN: &str = "OPEN";
/// GSI serving `read_all`.
pub const FEED_INDEX: &str = "feed";
/// GSI serving `open_streams`.
pub const OPEN_INDEX: &str = "open-runners";
/// GSI serving `stream_of_instance`.
pub const INSTANCE_INDEX: &str = "by-instance";
/// GSI serving `stream_of_runner`.
pub const RUNNER_INDEX: &str = "by-runner";
/// GSI of closed heads by when they closed, serving `closed_before` (sparse:
/// a head leaves it once archived, ADR-0024).
pub const CLOSED_INDEX: &str = "closed";
const CLOSED: &str = "CLOSED";
/// The attribute DynamoDB's TTL reads (epoch seconds). A stream's items get
/// it only once the archive holds them and its count matched.
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// Items one `TransactWriteItems` may hold.
const TRANSACT_ITEMS: usize = 100;
/// Checkpoint snapshots are split into chunks below DynamoDB's 400 KB item limit.
const CHUNK_BYTES: usize = 300 * 1024;
/// Bounded retries for throttling, transaction conflicts and feed-counter races.
const MAX_ATTEMPTS: u32 = 40;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn sk_event(seq: u64) -> String {
    format!("EV#{seq:012}")
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

fn sdk_unavailable<E>(e: SdkError<E>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    unavailable(e)
}

fn corrupt(stream: &str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        stream: stream.to_owned(),
        position: 0,
        reason: reason.to_string(),
    }
}

/// A stored event item.
#[derive(Serialize, Deserialize)]
struct EventItem {
    pk: String,
    sk: String,
    seq: u64,
    pos: u64,
    feed: String,
    kind: String,
    schema: u32,
    at: i64,
    body: String,
    cmd: String,
}

/// A stored head item (as read back).
#[derive(Deserialize)]
struct HeadItem {
    pk: String,
    version: u64,
    updated_at: i64,
    state: String,
    status: String,
    #[serde(default)]
    open_flag: Option<String>,
}

/// A command-id item.
#[derive(Serialize, Deserialize)]
struct CommandItem {
    pk: String,
    sk: String,
    stream: String,
    version: u64,
}

/// The values a head write sets; the database checks the no-leak rule on them.
#[derive(Clone, Debug)]
pub struct HeadWrite {
    /// The version the stream must be at (0: must not exist).
    pub expected: u64,
    /// The version written.
    pub version: u64,
    /// Status name.
    pub status: String,
    /// Launched instance.
    pub instance_id: Option<String>,
    /// Registered runner name.
    pub runner_name: Option<String>,
    /// Whether an instance may have been started (an unrejected launch intent).
    pub instance_possible: bool,
    /// Whether `Terminated` was recorded.
    pub terminated: bool,
    /// The instance a recorded `Terminated` names as gone.
    pub terminated_instance: Option<String>,
    /// Whether the stream stays open.
    pub open: bool,
    /// Moment of the last event.
    pub updated_at: i64,
    /// Folded state JSON.
    pub state: String,
}

impl HeadWrite {
    fn from_state(
        expected: u64,
        state: &RunnerState,
        updated_at: Timestamp,
    ) -> Result<Self, StoreError> {
        Ok(HeadWrite {
            expected,
            version: state.version,
            status: state.status().as_str().to_owned(),
            instance_id: state.instance().map(|i| i.id.0.clone()),
            runner_name: state.runner_name.clone(),
            instance_possible: matches!(
                state.launch.as_ref().map(|l| &l.outcome),
                Some(LaunchOutcome::Pending | LaunchOutcome::Launched(_))
            ),
            terminated: state.terminated_at.is_some(),
            terminated_instance: state
                .terminated_at
                .and(state.instance())
                .map(|i| i.id.0.clone()),
            open: !is_terminal(state),
            updated_at: updated_at.0,
            state: serde_json::to_string(state).map_err(unavailable)?,
        })
    }

    fn to_update(&self, table: &str, stream: &StreamId) -> Result<Update, StoreError> {
        let mut names = HashMap::from([
            ("#v".to_owned(), "version".to_owned()),
            ("#st".to_owned(), "status".to_owned()),
            ("#state".to_owned(), "state".to_owned()),
            ("#upd".to_owned(), "updated_at".to_owned()),
            ("#poss".to_owned(), "instance_possible".to_owned()),
            ("#term".to_owned(), "terminated".to_owned()),
            ("#open".to_owned(), "open_flag".to_owned()),
            ("#iid".to_owned(), "instance_id".to_owned()),
            ("#rn".to_owned(), "runner_name".to_owned()),
            ("#ti".to_owned(), "terminated_instance".to_owned()),
            ("#closed".to_owned(), "closed".to_owned()),
            ("#closed_at".to_owned(), "closed_at".to_owned()),
        ]);
        let mut values: Item = HashMap::from([
            (":v".to_owned(), n(self.version)),
            (":st".to_owned(), s(&self.status)),
            (":state".to_owned(), s(&self.state)),
            (":upd".to_owned(), n(self.updated_at)),
            (
                ":poss".to_owned(),
                AttributeValue::Bool(self.instance_possible),
            ),
            (":term".to_owned(), AttributeValue::Bool(self.terminated)),
            (":isopen".to_owned(), AttributeValue::Bool(self.open)),
            (":yes".to_owned(), AttributeValue::Bool(true)),
            (":no".to_owned(), AttributeValue::Bool(false)),
        ]);
        let mut set = vec![
            "#v = :v",
            "#st = :st",
            "#state = :state",
            "#upd = :upd",
            "#poss = :poss",
            "#term = :term",
        ];
        let mut remove = Vec::new();
        if self.open {
            set.push("#open = :open");
            values.insert(":open".into(), s(OPEN));
        } else {
            remove.push("#open");
            set.push("#closed = :closed, #closed_at = :upd");
            values.insert(":closed".into(), s(CLOSED));
        }
        match &self.instance_id {
            Some(id) => {
                set.push("#iid = :iid");
                values.insert(":iid".into(), s(id));
            }
            None => remove.push("#iid"),
        }
        match &self.runner_name {
            Some(name) => {
                set.push("#rn = :rn");
                values.insert(":rn".into(), s(name));
            }
            None => remove.push("#rn"),
        }
        // Bound in every write: the condition below compares it with the stored
        // instance ("-" names none).
        values.insert(
            ":ti".into(),
            s(self.terminated_instance.as_deref().unwrap_or("-")),
        );
        if self.terminated_instance.is_some() {
            set.push("#ti = :ti");
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let version_rule = if self.expected == 0 {
            "attribute_not_exists(pk)".to_owned()
        } else {
            values.insert(":expected".into(), n(self.expected));
            "#v = :expected".to_owned()
        };
        // The no-leak rule. A closing write must say `Terminated` or that no
        // instance may have been started, and — checked against what is stored,
        // whatever the writer claims — a stream whose head records an instance
        // closes only with a `Terminated` naming that very instance.
        let condition = format!(
            "({version_rule}) AND (:isopen = :yes OR ((:term = :yes OR :poss = :no) \
             AND (attribute_not_exists(#iid) OR #iid = :ti)))"
        );
        names.retain(|k, _| expression.contains(k.as_str()) || condition.contains(k.as_str()));
        Update::builder()
            .table_name(table)
            .key("pk", s(stream.as_str()))
            .key("sk", s(HEAD))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(unavailable)
    }
}

/// The outcome of creating the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableSetup {
    /// The table was created.
    Created,
    /// It existed already; nothing changed.
    Existed,
}

/// The DynamoDB event log. Cheap to clone.
#[derive(Clone)]
pub struct DynamoEventStore {
    client: Client,
    table: String,
    page_size: Option<i32>,
}

impl DynamoEventStore {
    /// A store on `table`.
    pub fn new(config: &SdkConfig, table: impl Into<String>) -> Self {
        DynamoEventStore {
            client: crate::calls::dynamodb(config),
            table: table.into(),
            page_size: None,
        }
    }

    /// Reads at most `items` per request (forces pagination in tests).
    pub fn with_page_size(mut self, items: i32) -> Self {
        self.page_size = Some(items);
        self
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table with its indexes and stream (keys only), unless it exists.
    pub async fn create_table(&self) -> Result<TableSetup, StoreError> {
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(unavailable)
        };
        let attr = |name: &str, kind: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()
                .map_err(unavailable)
        };
        let index = |name: &str,
                     hash: &str,
                     range: Option<&str>|
         -> Result<GlobalSecondaryIndex, StoreError> {
            let mut b = GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key(hash, KeyType::Hash)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                );
            if let Some(range) = range {
                b = b.key_schema(key(range, KeyType::Range)?);
            }
            b.build().map_err(unavailable)
        };
        let result = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .attribute_definitions(attr("pk", ScalarAttributeType::S)?)
            .attribute_definitions(attr("sk", ScalarAttributeType::S)?)
            .attribute_definitions(attr("feed", ScalarAttributeType::S)?)
            .attribute_definitions(attr("pos", ScalarAttributeType::N)?)
            .attribute_definitions(attr("open_flag", ScalarAttributeType::S)?)
            .attribute_definitions(attr("instance_id", ScalarAttributeType::S)?)
            .attribute_definitions(attr("runner_name", ScalarAttributeType::S)?)
            .attribute_definitions(attr("closed", ScalarAttributeType::S)?)
            .attribute_definitions(attr("closed_at", ScalarAttributeType::N)?)
            .global_secondary_indexes(index(FEED_INDEX, "feed", Some("pos"))?)
            .global_secondary_indexes(index(OPEN_INDEX, "open_flag", Some("pk"))?)
            .global_secondary_indexes(index(INSTANCE_INDEX, "instance_id", None)?)
            .global_secondary_indexes(index(RUNNER_INDEX, "runner_name", None)?)
            .global_secondary_indexes(index(CLOSED_INDEX, "closed", Some("closed_at"))?)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::KeysOnly)
                    .build()
                    .map_err(unavailable)?,
            )
            .send()
            .await;
        match result {
            Ok(_) => {
                self.enable_ttl().await?;
                Ok(TableSetup::Created)
            }
            Err(e) if error_code(&e).0 == "ResourceInUseException" => Ok(TableSetup::Existed),
            Err(e) => Err(sdk_unavailable(e)),
        }
    }

    /// Turns on TTL expiry of [`TTL_ATTRIBUTE`] once the table is active
    /// (items carry it only once archived, ADR-0024).
    async fn enable_ttl(&self) -> Result<(), StoreError> {
        use aws_sdk_dynamodb::types::{TableStatus, TimeToLiveSpecification};
        for _ in 0..120 {
            let table = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(sdk_unavailable)?;
            if table.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(TTL_ATTRIBUTE)
                    .enabled(true)
                    .build()
                    .map_err(unavailable)?,
            )
            .send()
            .await
            .map_err(sdk_unavailable)?;
        Ok(())
    }

    /// Writes a head directly, bypassing the domain (and this adapter's own check):
    /// the database still refuses a closed head whose instance may be alive.
    pub async fn put_head_unchecked(
        &self,
        stream: &StreamId,
        head: &HeadWrite,
    ) -> Result<(), StoreError> {
        let update = head.to_update(&self.table, stream)?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(update).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match e.into_service_error() {
                TransactWriteItemsError::TransactionCanceledException(c)
                    if c.cancellation_reasons().first().and_then(|r| r.code())
                        == Some("ConditionalCheckFailed") =>
                {
                    Err(StoreError::Refused(format!(
                        "head of {stream}: version or no-leak condition failed"
                    )))
                }
                other => Err(unavailable(other)),
            },
        }
    }

    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_unavailable)?;
        Ok(out.item().cloned())
    }

    /// Every event item of `stream`, in order (a consistent read).
    async fn event_items(&self, stream: &StreamId) -> Result<Vec<Item>, StoreError> {
        self.query_all(
            || {
                self.client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("pk = :pk AND begins_with(sk, :ev)")
                    .expression_attribute_values(":pk", s(stream.as_str()))
                    .expression_attribute_values(":ev", s("EV#"))
                    .consistent_read(true)
            },
            None,
        )
        .await
    }

    /// Up to `limit` items of the feed index after position `after`.
    async fn feed_items(&self, after: u64, limit: usize) -> Result<Vec<Item>, StoreError> {
        self.query_all(
            || {
                self.client
                    .query()
                    .table_name(&self.table)
                    .index_name(FEED_INDEX)
                    .key_condition_expression("feed = :f AND pos > :after")
                    .expression_attribute_values(":f", s(FEED_PARTITION))
                    .expression_attribute_values(":after", n(after))
            },
            Some(limit.max(1)),
        )
        .await
    }

    async fn feed_counter(&self) -> Result<u64, StoreError> {
        match self.get(FEED_PK, HEAD).await? {
            Some(item) => match item.get("pos") {
                Some(AttributeValue::N(v)) => v.parse().map_err(|e| corrupt(FEED_PK, e)),
                _ => Err(corrupt(FEED_PK, "feed counter without pos")),
            },
            None => Ok(0),
        }
    }

    /// Runs a query to the end (or until `limit` items), following `LastEvaluatedKey`.
    async fn query_all(
        &self,
        build: impl Fn() -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = build().set_exclusive_start_key(start.take());
            if let Some(page) = self.page_size {
                q = q.limit(page);
            } else if let Some(limit) = limit {
                q = q.limit(
                    i32::try_from(limit - items.len())
                        .unwrap_or(i32::MAX)
                        .max(1),
                );
            }
            let out = q.send().await.map_err(sdk_unavailable)?;
            items.extend(out.items().iter().cloned());
            if limit.is_some_and(|l| items.len() >= l) {
                items.truncate(limit.unwrap_or(usize::MAX));
                break;
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        Ok(items)
    }

    async fn backoff(attempt: u32) {
        use rand::Rng;
        let cap = 5u64 << attempt.min(6);
        let ms = rand::rng().random_range(1..=cap.max(2));
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    fn head_from_item(item: Item) -> Result<StreamHead, StoreError> {
        let head: HeadItem = serde_dynamo::from_item(item).map_err(|e| corrupt("?", e))?;
        let state: RunnerState =
            serde_json::from_str(&head.state).map_err(|e| corrupt(&head.pk, e))?;
        let stream = StreamId::parse(&head.pk).map_err(|e| corrupt(&head.pk, e))?;
        let status = serde_json::from_value(serde_json::Value::String(head.status))
            .map_err(|e| corrupt(&head.pk, e))?;
        Ok(StreamHead {
            stream,
            version: head.version,
            status,
            instance_id: state.instance().map(|i| i.id.clone()),
            open: head.open_flag.is_some(),
            updated_at: Timestamp(head.updated_at),
            state,
        })
    }

    fn recorded(item: Item) -> Result<RecordedEvent, StoreError> {
        let e: EventItem = serde_dynamo::from_item(item).map_err(|e| corrupt("?", e))?;
        let event = jitr_infra::decode_event(&e.pk, e.pos, e.schema, &e.body)?;
        Ok(RecordedEvent {
            stream: StreamId::parse(&e.pk).map_err(|err| corrupt(&e.pk, err))?,
            seq: e.seq,
            position: e.pos,
            event,
        })
    }

    /// The stream of the head found by `attribute = value` on a single-key GSI.
    async fn stream_by_index(
        &self,
        index: &'static str,
        attribute: &'static str,
        value: &str,
    ) -> Result<Option<StreamId>, StoreError> {
        let items = self
            .query_all(
                || {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .index_name(index)
                        .key_condition_expression("#a = :v")
                        .expression_attribute_names("#a", attribute)
                        .expression_attribute_values(":v", s(value))
                },
                Some(1),
            )
            .await?;
        match items.first().and_then(|i| i.get("pk")) {
            Some(AttributeValue::S(pk)) => {
                Ok(Some(StreamId::parse(pk).map_err(|e| corrupt(pk, e))?))
            }
            _ => Ok(None),
        }
    }

    async fn duplicate(&self, command_id: &CommandId) -> Result<Option<AppendOutcome>, StoreError> {
        let Some(item) = self.get(&command_pk(command_id), "CMD").await? else {
            return Ok(None);
        };
        let c: CommandItem = serde_dynamo::from_item(item).map_err(|e| corrupt("?", e))?;
        Ok(Some(AppendOutcome::Duplicate {
            stream: StreamId::parse(&c.stream).map_err(|e| corrupt(&c.stream, e))?,
            version: c.version,
        }))
    }
}

fn command_pk(command_id: &CommandId) -> String {
    format!("#cmd#{}", command_id.0)
}

fn put(table: &str, item: Item) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .build()
        .map_err(unavailable)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// Why one append attempt did not commit.
enum AttemptError {
    /// Retry after a pause (throttled, conflicting transaction, counter moved).
    Retry,
    /// Final.
    Fail(StoreError),
    /// The command id exists: look up the first outcome.
    Duplicate,
}

#[async_trait]
impl EventStore for DynamoEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected_version: u64,
        events: &[RunnerEvent],
        command_id: &CommandId,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() {
            return Err(StoreError::NothingToAppend);
        }
        for attempt in 0..MAX_ATTEMPTS {
            match self
                .try_append(stream, expected_version, events, command_id)
                .await
            {
                Ok(outcome) => return Ok(outcome),
                Err(AttemptError::Duplicate) => {
                    if let Some(first) = self.duplicate(command_id).await? {
                        return Ok(first);
                    }
                }
                Err(AttemptError::Fail(e)) => return Err(e),
                Err(AttemptError::Retry) => {}
            }
            Self::backoff(attempt).await;
        }
        Err(StoreError::Unavailable(
            format!("append to {stream}: still contended after {MAX_ATTEMPTS} attempts").into(),
        ))
    }

    async fn read_stream(&self, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
        let items = self.event_items(stream).await?;
        items.into_iter().map(Self::recorded).collect()
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        // The index is eventually consistent: keep only the gap-free prefix, so a
        // reader never skips a position that becomes visible later.
        let items = self.feed_items(after, limit).await?;
        let position = |item: &Item| match item.get("pos") {
            Some(AttributeValue::N(v)) => v.parse::<u64>().ok(),
            _ => None,
        };
        (after + 1..)
            .zip(items)
            .take_while(|(next, item)| position(item) == Some(*next))
            .map(|(_, item)| Self::recorded(item))
            .collect()
    }

    async fn read_all_with_gaps(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let items = self.feed_items(after, limit).await?;
        items.into_iter().map(Self::recorded).collect()
    }

    async fn head(&self, stream: &StreamId) -> Result<Option<StreamHead>, StoreError> {
        self.get(stream.as_str(), HEAD)
            .await?
            .map(Self::head_from_item)
            .transpose()
    }

    async fn stream_of_instance(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<StreamId>, StoreError> {
        self.stream_by_index(INSTANCE_INDEX, "instance_id", &instance.0)
            .await
    }

    async fn stream_of_runner(&self, runner_name: &str) -> Result<Option<StreamId>, StoreError> {
        self.stream_by_index(RUNNER_INDEX, "runner_name", runner_name)
            .await
    }

    async fn open_streams(&self) -> Result<OpenStreams, StoreError> {
        let items = self
            .query_all(
                || {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .index_name(OPEN_INDEX)
                        .key_condition_expression("open_flag = :o")
                        .expression_attribute_values(":o", s(OPEN))
                },
                None,
            )
            .await?;
        Ok(OpenStreams::collect(items.into_iter().map(|item| {
            let key = item
                .get("pk")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_else(|| "?".into());
            (key, Self::head_from_item(item))
        })))
    }

    async fn last_position(&self) -> Result<u64, StoreError> {
        self.feed_counter().await
    }
}

impl DynamoEventStore {
    async fn try_append(
        &self,
        stream: &StreamId,
        expected_version: u64,
        events: &[RunnerEvent],
        command_id: &CommandId,
    ) -> Result<AppendOutcome, AttemptError> {
        let fail = AttemptError::Fail;
        let head = self.head(stream).await.map_err(fail)?;
        let (actual, mut state) = match head {
            Some(h) => (h.version, h.state),
            None => (0, RunnerState::default()),
        };
        if actual != expected_version {
            if self.duplicate(command_id).await.map_err(fail)?.is_some() {
                return Err(AttemptError::Duplicate);
            }
            return Err(fail(StoreError::Conflict {
                stream: stream.clone(),
                expected: expected_version,
                actual,
            }));
        }
        let first_pos = self.feed_counter().await.map_err(fail)? + 1;
        let mut items = Vec::with_capacity(events.len() + 3);
        for (i, event) in events.iter().enumerate() {
            state = evolve(state, event);
            let item = EventItem {
                pk: stream.to_string(),
                sk: sk_event(actual + i as u64 + 1),
                seq: actual + i as u64 + 1,
                pos: first_pos + i as u64,
                feed: FEED_PARTITION.into(),
                kind: event.kind().into(),
                schema: EVENT_SCHEMA,
                at: event.at().0,
                body: serde_json::to_string(event).map_err(|e| fail(unavailable(e)))?,
                cmd: command_id.0.clone(),
            };
            let item: Item = serde_dynamo::to_item(item).map_err(|e| fail(unavailable(e)))?;
            items.push(put(&self.table, item).map_err(fail)?);
        }
        let last_at = events.last().map_or(Timestamp(0), RunnerEvent::at);
        let head = HeadWrite::from_state(expected_version, &state, last_at).map_err(fail)?;
        if !head.open && !head.terminated && head.instance_possible {
            return Err(fail(StoreError::Refused(format!(
                "{stream} would close while its instance may be alive"
            ))));
        }
        let version = state.version;
        let last_pos = first_pos + events.len() as u64 - 1;
        let counter = {
            let mut u = Update::builder()
                .table_name(&self.table)
                .key("pk", s(FEED_PK))
                .key("sk", s(HEAD))
                .update_expression("SET pos = :new")
                .expression_attribute_values(":new", n(last_pos));
            u = if first_pos == 1 {
                u.condition_expression("attribute_not_exists(pk)")
            } else {
                u.condition_expression("pos = :old")
                    .expression_attribute_values(":old", n(first_pos - 1))
            };
            TransactWriteItem::builder()
                .update(u.build().map_err(|e| fail(unavailable(e)))?)
                .build()
        };
        let command: Item = serde_dynamo::to_item(CommandItem {
            pk: command_pk(command_id),
            sk: "CMD".into(),
            stream: stream.to_string(),
            version,
        })
        .map_err(|e| fail(unavailable(e)))?;
        let mut transaction = vec![
            TransactWriteItem::builder()
                .update(head.to_update(&self.table, stream).map_err(fail)?)
                .build(),
            counter,
            put(&self.table, command).map_err(fail)?,
        ];
        transaction.extend(items);
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(transaction))
            .send()
            .await;
        let err = match result {
            Ok(_) => return Ok(AppendOutcome::Appended { version }),
            Err(e) => e,
        };
        let (code, message) = error_code(&err);
        match err.into_service_error() {
            TransactWriteItemsError::TransactionCanceledException(c) => {
                let codes: Vec<&str> = c
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None"))
                    .collect();
                let failed = |i: usize| codes.get(i) == Some(&"ConditionalCheckFailed");
                if failed(2) {
                    Err(AttemptError::Duplicate)
                } else if failed(0) {
                    // Reload: a version change is a conflict for the caller.
                    Err(AttemptError::Retry)
                } else if failed(1)
                    || codes.iter().any(|c| {
                        matches!(
                            *c,
                            "TransactionConflict"
                                | "ThrottlingError"
                                | "ProvisionedThroughputExceeded"
                                | "RequestLimitExceeded"
                        )
                    })
                {
                    Err(AttemptError::Retry)
                } else {
                    Err(fail(StoreError::Unavailable(
                        format!("append to {stream} cancelled: {codes:?}: {message}").into(),
                    )))
                }
            }
            _ if matches!(
                code.as_str(),
                "TransactionConflictException"
                    | "ThrottlingException"
                    | "ProvisionedThroughputExceededException"
                    | "RequestLimitExceeded"
                    | "TransactionInProgressException"
            ) =>
            {
                Err(AttemptError::Retry)
            }
            other => Err(fail(unavailable(other))),
        }
    }
}

/// Checkpoint head item. Its chunks are keyed by generation and by the saving
/// writer's nonce, so that two writers never write the same chunk.
#[derive(Serialize, Deserialize)]
struct CheckpointItem {
    pk: String,
    sk: String,
    position: u64,
    generation: u64,
    chunks: u64,
    /// Empty for checkpoints saved before writers were fenced.
    #[serde(default)]
    nonce: String,
}

impl CheckpointItem {
    fn chunk_prefix(&self) -> String {
        chunk_prefix(self.generation, &self.nonce)
    }
}

fn chunk_prefix(generation: u64, nonce: &str) -> String {
    if nonce.is_empty() {
        format!("CHUNK#{generation:08}#")
    } else {
        format!("CHUNK#{generation:08}#{nonce}#")
    }
}

/// Lease item.
#[derive(Serialize, Deserialize)]
struct LeaseItem {
    pk: String,
    sk: String,
    holder: String,
    expires_at: i64,
}

#[async_trait]
impl CheckpointStore for DynamoEventStore {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        let pk = format!("#checkpoint#{name}");
        // A save that lands between reading the head and its chunks deletes the
        // chunks read: read the head again.
        let mut last_error = None;
        for _ in 0..3 {
            let Some(item) = self.get(&pk, HEAD).await? else {
                return Ok(None);
            };
            let head: CheckpointItem =
                serde_dynamo::from_item(item).map_err(|e| corrupt(&pk, e))?;
            match self.checkpoint_chunks(&pk, &head).await {
                Ok(snapshot) => {
                    return Ok(Some(Checkpoint {
                        position: head.position,
                        snapshot,
                        generation: head.generation,
                    }));
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| corrupt(&pk, "unreadable")))
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        checkpoint: &Checkpoint,
    ) -> Result<u64, StoreError> {
        use rand::Rng;
        let pk = format!("#checkpoint#{name}");
        let previous = match self.get(&pk, HEAD).await? {
            Some(item) => Some(
                serde_dynamo::from_item::<_, CheckpointItem>(item).map_err(|e| corrupt(&pk, e))?,
            ),
            None => None,
        };
        let expected = checkpoint.generation;
        let found = previous.as_ref().map_or(0, |p| p.generation);
        let moved = |found| StoreError::CheckpointMoved {
            name: name.to_owned(),
            expected,
            found,
        };
        if found != expected {
            return Err(moved(found));
        }
        let generation = expected + 1;
        let nonce = format!("{:016x}", rand::rng().random::<u64>());
        let prefix = chunk_prefix(generation, &nonce);
        let parts: Vec<&[u8]> = if checkpoint.snapshot.is_empty() {
            vec![&[][..]]
        } else {
            checkpoint.snapshot.chunks(CHUNK_BYTES).collect()
        };
        let mut requests: Vec<WriteRequest> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let item: Item = HashMap::from([
                ("pk".to_owned(), s(&pk)),
                ("sk".to_owned(), s(format!("{prefix}{i:06}"))),
                ("data".to_owned(), AttributeValue::B(part.to_vec().into())),
            ]);
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(unavailable)?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        for batch in requests.chunks(25) {
            self.batch_write(batch.to_vec()).await?;
        }
        let head: Item = serde_dynamo::to_item(CheckpointItem {
            pk: pk.clone(),
            sk: HEAD.into(),
            position: checkpoint.position,
            generation,
            chunks: parts.len() as u64,
            nonce,
        })
        .map_err(unavailable)?;
        // The switch to the new chunks is this one conditional write.
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(head));
        put = if expected == 0 {
            put.condition_expression("attribute_not_exists(pk)")
        } else {
            put.condition_expression("generation = :g")
                .expression_attribute_values(":g", n(expected))
        };
        if let Err(e) = put.send().await {
            let (code, _) = error_code(&e);
            self.delete_chunks(&pk, &prefix, parts.len() as u64).await?;
            if code == "ConditionalCheckFailedException" {
                let now_at = match self.get(&pk, HEAD).await? {
                    Some(item) => serde_dynamo::from_item::<_, CheckpointItem>(item)
                        .map_or(0, |h| h.generation),
                    None => 0,
                };
                return Err(moved(now_at));
            }
            return Err(sdk_unavailable(e));
        }
        if let Some(previous) = previous {
            self.delete_chunks(&pk, &previous.chunk_prefix(), previous.chunks)
                .await?;
        }
        Ok(generation)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError> {
        let pk = format!("#lease#{name}");
        let item: Item = serde_dynamo::to_item(LeaseItem {
            pk: pk.clone(),
            sk: HEAD.into(),
            holder: holder.to_owned(),
            expires_at: now.0 + ttl_ms as i64,
        })
        .map_err(unavailable)?;
        let taken = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR holder = :h OR expires_at <= :now")
            .expression_attribute_values(":h", s(holder))
            .expression_attribute_values(":now", n(now.0))
            .send()
            .await;
        if let Err(e) = taken {
            let (code, _) = error_code(&e);
            if code != "ConditionalCheckFailedException" {
                return Err(sdk_unavailable(e));
            }
        }
        let Some(item) = self.get(&pk, HEAD).await? else {
            return Err(corrupt(&pk, "lease vanished"));
        };
        let lease: LeaseItem = serde_dynamo::from_item(item).map_err(|e| corrupt(&pk, e))?;
        Ok(Lease {
            holder: lease.holder,
            expires_at: Timestamp(lease.expires_at),
        })
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let pk = format!("#lease#{name}");
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(&pk))
            .key("sk", s(HEAD))
            .condition_expression("holder = :h")
            .expression_attribute_values(":h", s(holder))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e).0 == "ConditionalCheckFailedException" => Ok(()),
            Err(e) => Err(sdk_unavailable(e)),
        }
    }
}

impl DynamoEventStore {
    /// The snapshot bytes of the checkpoint `head` names.
    async fn checkpoint_chunks(
        &self,
        pk: &str,
        head: &CheckpointItem,
    ) -> Result<Vec<u8>, StoreError> {
        let prefix = head.chunk_prefix();
        let chunks = self
            .query_all(
                || {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk AND begins_with(sk, :c)")
                        .expression_attribute_values(":pk", s(pk))
                        .expression_attribute_values(":c", s(&prefix))
                        .consistent_read(true)
                },
                None,
            )
            .await?;
        if chunks.len() as u64 != head.chunks {
            return Err(corrupt(
                pk,
                format!("{} of {} chunks", chunks.len(), head.chunks),
            ));
        }
        let mut snapshot = Vec::new();
        for chunk in chunks {
            match chunk.get("data") {
                Some(AttributeValue::B(blob)) => snapshot.extend_from_slice(blob.as_ref()),
                _ => return Err(corrupt(pk, "chunk without data")),
            }
        }
        Ok(snapshot)
    }

    /// Deletes `count` chunks keyed `{prefix}{i:06}`.
    async fn delete_chunks(&self, pk: &str, prefix: &str, count: u64) -> Result<(), StoreError> {
        let deletes: Vec<WriteRequest> = (0..count)
            .filter_map(|i| {
                aws_sdk_dynamodb::types::DeleteRequest::builder()
                    .key("pk", s(pk))
                    .key("sk", s(format!("{prefix}{i:06}")))
                    .build()
                    .ok()
                    .map(|d| WriteRequest::builder().delete_request(d).build())
            })
            .collect();
        for batch in deletes.chunks(25) {
            self.batch_write(batch.to_vec()).await?;
        }
        Ok(())
    }
}

impl DynamoEventStore {
    async fn batch_write(&self, mut requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        for attempt in 0..MAX_ATTEMPTS {
            if requests.is_empty() {
                return Ok(());
            }
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(sdk_unavailable)?;
            requests = out
                .unprocessed_items()
                .and_then(|m| m.get(&self.table))
                .cloned()
                .unwrap_or_default();
            if !requests.is_empty() {
                Self::backoff(attempt).await;
            }
        }
        Err(StoreError::Unavailable(
            "batch write: items still unprocessed".into(),
        ))
    }
}

#[async_trait]
impl ExpiringLog for DynamoEventStore {
    async fn closed_before(&self, before: Timestamp) -> Result<Vec<ClosedStream>, StoreError> {
        let items = self
            .query_all(
                || {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .index_name(CLOSED_INDEX)
                        .key_condition_expression("#c = :c AND closed_at < :before")
                        .expression_attribute_names("#c", "closed")
                        .expression_attribute_values(":c", s(CLOSED))
                        .expression_attribute_values(":before", n(before.0))
                },
                None,
            )
            .await?;
        items
            .into_iter()
            .map(|item| {
                let head: HeadItem = serde_dynamo::from_item(item).map_err(|e| corrupt("?", e))?;
                Ok(ClosedStream {
                    stream: StreamId::parse(&head.pk).map_err(|e| corrupt(&head.pk, e))?,
                    version: head.version,
                    closed_at: Timestamp(head.updated_at),
                })
            })
            .collect()
    }

    /// Sets [`TTL_ATTRIBUTE`] on each stream's events, command ids and head,
    /// one stream at a time (its head last, under the version archived and
    /// still closed), after counting its events; the head leaves the
    /// `closed` index. DynamoDB deletes the items within days; until then a
    /// feed read through the archive reads each event once.
    async fn expire(&self, streams: &[ClosedStream], now: Timestamp) -> Result<u64, StoreError> {
        let expires = n(now.0.div_euclid(1000));
        let mut expired = 0;
        for closed in streams {
            let pk = closed.stream.as_str();
            let items = self.event_items(&closed.stream).await?;
            if items.len() as u64 != closed.version {
                return Err(StoreError::Refused(format!(
                    "{pk}: holds {} events, not its version {}: not let go",
                    items.len(),
                    closed.version
                )));
            }
            let mut keys: Vec<(String, String)> = Vec::new();
            for item in &items {
                let e: EventItem =
                    serde_dynamo::from_item(item.clone()).map_err(|e| corrupt(pk, e))?;
                keys.push((e.pk, e.sk));
                let command = (command_pk(&CommandId::new(e.cmd)), "CMD".to_owned());
                if !keys.contains(&command) {
                    keys.push(command);
                }
            }
            let expire = |(pk, sk): &(String, String)| -> Result<TransactWriteItem, StoreError> {
                let update = Update::builder()
                    .table_name(&self.table)
                    .key("pk", s(pk))
                    .key("sk", s(sk))
                    .update_expression("SET #ttl = :t")
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
                    .expression_attribute_values(":t", expires.clone())
                    .build()
                    .map_err(unavailable)?;
                Ok(TransactWriteItem::builder().update(update).build())
            };
            let head = Update::builder()
                .table_name(&self.table)
                .key("pk", s(pk))
                .key("sk", s(HEAD))
                .update_expression("SET #ttl = :t REMOVE #c")
                .condition_expression("version = :v AND attribute_not_exists(open_flag)")
                .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
                .expression_attribute_names("#c", "closed")
                .expression_attribute_values(":t", expires.clone())
                .expression_attribute_values(":v", n(closed.version))
                .build()
                .map_err(unavailable)?;
            let mut writes = keys.iter().map(expire).collect::<Result<Vec<_>, _>>()?;
            writes.push(TransactWriteItem::builder().update(head).build());
            // The head goes in the last transaction: a stream still listed as
            // closed is expired again by the next run, never half forgotten.
            let batches: Vec<Vec<TransactWriteItem>> = writes
                .chunks(TRANSACT_ITEMS)
                .map(<[TransactWriteItem]>::to_vec)
                .collect();
            for batch in batches {
                let result = self
                    .client
                    .transact_write_items()
                    .set_transact_items(Some(batch))
                    .send()
                    .await;
                if let Err(e) = result {
                    return Err(match e.into_service_error() {
                        TransactWriteItemsError::TransactionCanceledException(_) => {
                            StoreError::Refused(format!(
                                "{pk}: not closed at version {}, or an item is gone: not let go",
                                closed.version
                            ))
                        }
                        other => unavailable(other),
                    });
                }
            }
            expired += closed.version;
        }
        Ok(expired)
    }
}
