//! The embedded command bus: an unbounded in-process channel.

use async_trait::async_trait;
use jitr_domain::TerminateRunner;
use tokio::sync::mpsc;

use crate::ports::{BusError, CommandBus};

/// The embedded bus: an unbounded in-process channel.
#[derive(Clone)]
pub struct InProcessBus {
    tx: mpsc::UnboundedSender<TerminateRunner>,
}

impl InProcessBus {
    /// A bus and the receiving end its consumer reads.
    pub fn new() -> (InProcessBus, mpsc::UnboundedReceiver<TerminateRunner>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (InProcessBus { tx }, rx)
    }
}

#[async_trait]
impl CommandBus for InProcessBus {
    async fn publish(&self, commands: &[TerminateRunner]) -> Result<(), BusError> {
        for command in commands {
            self.tx
                .send(command.clone())
                .map_err(|_| BusError::Closed)?;
        }
        Ok(())
    }
}
