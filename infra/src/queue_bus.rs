//! A command bus over a queue: each command is sent as its envelope, the body an
//! EventBridge rule would deliver to an SQS target. The embedded default uses it
//! over a [`crate::LocalQueue`], so compensation is consumed exactly as on AWS.

use std::sync::Arc;

use async_trait::async_trait;
use jitr_domain::TerminateRunner;

use crate::ports::{BusError, CommandBus, Queue, encode_terminate_runner};

/// Puts compensation commands on a queue.
#[derive(Clone)]
pub struct QueueBus {
    queue: Arc<dyn Queue>,
}

impl QueueBus {
    /// A bus writing to `queue`.
    pub fn new(queue: Arc<dyn Queue>) -> Self {
        QueueBus { queue }
    }
}

#[async_trait]
impl CommandBus for QueueBus {
    async fn publish(&self, commands: &[TerminateRunner]) -> Result<(), BusError> {
        for command in commands {
            let body = encode_terminate_runner(command)?;
            self.queue
                .publish(&body, None, &[("stream", command.stream.as_str())])
                .await
                .map_err(|e| BusError::Unavailable(Box::new(e)))?;
        }
        Ok(())
    }
}
