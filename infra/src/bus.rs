//! The command bus port: where compensation commands go (EventBridge in AWS).

use async_trait::async_trait;
use jitr_domain::TerminateRunner;
use thiserror::Error;
use tokio::sync::mpsc;

/// The bus did not take a command.
#[derive(Debug, Error)]
pub enum BusError {
    /// Nobody consumes the bus any more.
    #[error("the command bus is closed: no consumer is running")]
    Closed,
    /// The backend failed.
    #[error("command bus unavailable: {0}")]
    Unavailable(#[source] crate::event_store::BoxError),
}

/// Carries compensation commands to the compensation handler, at least once.
#[async_trait]
pub trait CommandBus: Send + Sync {
    /// Puts the commands on the bus.
    async fn publish(&self, commands: &[TerminateRunner]) -> Result<(), BusError>;
}

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
