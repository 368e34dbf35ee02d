//! The archive's objects in S3 (ADR-0024): one object a part, under a prefix
//! of the deployment's archive bucket.

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use jitr_infra::archive::{ArchiveError, ArchiveObjects};

/// An archive in an S3 bucket.
#[derive(Clone, Debug)]
pub struct S3Archive {
    client: Client,
    bucket: String,
    prefix: String,
}

fn storage(what: &str, key: &str, e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Storage(format!("{what} {key}: {e}"))
}

impl S3Archive {
    /// The archive under `prefix` (none: the bucket's root) of `bucket`.
    /// With an endpoint configured (an emulator, a VPC endpoint) requests
    /// name the bucket in the path.
    pub fn new(config: &SdkConfig, bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        let mut prefix: String = prefix.into();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        S3Archive {
            client: crate::calls::s3(config),
            bucket: bucket.into(),
            prefix,
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn object(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl ArchiveObjects for S3Archive {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ArchiveError> {
        let object = self.object(key);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&object)
            .content_type("application/vnd.apache.parquet")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| {
                storage(
                    "putting",
                    &object,
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        let object = self.object(key);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| {
                storage(
                    "getting",
                    &object,
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| storage("reading", &object, e))?;
        Ok(body.into_bytes())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.object(prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                storage("listing", prefix, aws_sdk_s3::error::DisplayErrorContext(e))
            })?;
            for object in page.contents() {
                if let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    keys.push(key.to_owned());
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}
