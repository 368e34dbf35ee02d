//! DynamoDB Streams as nudges for the projector: a record says "the log changed";
//! the projector then reads the feed from its checkpoint. Duplicated, reordered or
//! lost records are harmless: the feed, not the record, is the truth.

use std::collections::HashMap;

use aws_config::SdkConfig;
use aws_sdk_dynamodbstreams::Client as StreamsClient;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;

use jitr_infra::StoreError;

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("dynamodb streams {what}: {e}").into())
}

/// Polls every shard of the event table's stream.
pub struct LogNudges {
    streams: StreamsClient,
    stream_arn: String,
    iterators: HashMap<String, Option<String>>,
}

impl LogNudges {
    /// Starts listening from now on (`LATEST` of every shard) on `table`'s stream.
    pub async fn open(config: &SdkConfig, table: &str) -> Result<Self, StoreError> {
        let described = crate::calls::dynamodb(config)
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| unavailable("describe table", e))?;
        let stream_arn = described
            .table()
            .and_then(|t| t.latest_stream_arn())
            .ok_or_else(|| unavailable("describe table", format!("{table} has no stream")))?
            .to_owned();
        let mut nudges = LogNudges {
            streams: crate::calls::dynamodb_streams(config),
            stream_arn,
            iterators: HashMap::new(),
        };
        nudges.discover_shards().await?;
        Ok(nudges)
    }

    async fn discover_shards(&mut self) -> Result<(), StoreError> {
        let mut start: Option<String> = None;
        loop {
            let out = self
                .streams
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(|e| unavailable("describe stream", e))?;
            let Some(description) = out.stream_description() else {
                break;
            };
            for shard in description.shards() {
                let Some(id) = shard.shard_id() else { continue };
                if self.iterators.contains_key(id) {
                    continue;
                }
                let iterator = self
                    .streams
                    .get_shard_iterator()
                    .stream_arn(&self.stream_arn)
                    .shard_id(id)
                    .shard_iterator_type(ShardIteratorType::Latest)
                    .send()
                    .await
                    .map_err(|e| unavailable("shard iterator", e))?;
                self.iterators
                    .insert(id.to_owned(), iterator.shard_iterator().map(str::to_owned));
            }
            match description.last_evaluated_shard_id() {
                Some(last) => start = Some(last.to_owned()),
                None => break,
            }
        }
        Ok(())
    }

    /// Reads every shard once; returns how many change records arrived.
    pub async fn poll(&mut self) -> Result<usize, StoreError> {
        let mut records = 0;
        let mut closed = Vec::new();
        for (shard, iterator) in &mut self.iterators {
            let Some(it) = iterator.take() else { continue };
            let out = self
                .streams
                .get_records()
                .shard_iterator(it)
                .send()
                .await
                .map_err(|e| unavailable("get records", e))?;
            records += out.records().len();
            *iterator = out.next_shard_iterator().map(str::to_owned);
            if iterator.is_none() {
                closed.push(shard.clone());
            }
        }
        if !closed.is_empty() {
            // A closed shard has children: pick them up.
            self.discover_shards().await?;
        }
        Ok(records)
    }
}
