//! The embedded default's adapters in one data directory: the SQLite log
//! (`events.db`), the simulated EC2, GitHub and secret store (`cloud.db`), and local
//! queues (`queues.db`: scale-up, lifecycle and compensation, the bus writing the
//! compensation queue as EventBridge's rule does on AWS).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jitr_infra::{
    LocalQueue, Queue, QueueBus, SimClock, SimCloud, SimGitHub, SimSecrets, SimSettings,
    SqliteEventStore,
};

use super::serve::ServeError;
use crate::app::Ports;

/// The embedded adapters, kept concrete for those who inspect them (the
/// simulation, benchmarks, tests), and the ports over them.
pub struct Embedded {
    /// The log.
    pub store: Arc<SqliteEventStore>,
    /// The simulated EC2.
    pub cloud: SimCloud,
    /// The GitHub stand-in.
    pub github: SimGitHub,
    /// The ports an [`crate::app::App`] is built from.
    pub ports: Ports,
}

impl Embedded {
    /// Opens (or creates) everything in `data_dir`; time comes from `clock`, and a
    /// message goes to its dead-letter queue after `max_receives` receives.
    pub fn open(
        data_dir: &Path,
        settings: SimSettings,
        clock: SimClock,
        max_receives: u32,
    ) -> Result<Embedded, ServeError> {
        std::fs::create_dir_all(data_dir)?;
        let store = Arc::new(SqliteEventStore::open(data_dir.join("events.db"))?);
        let cloud_db = data_dir.join("cloud.db");
        let cloud = SimCloud::open(&cloud_db, settings, clock.clone())?;
        let github = SimGitHub::open(&cloud_db)?;
        Embedded::over(data_dir, store, cloud, github, clock, max_receives)
    }

    /// The ports over a log and simulator already open in `data_dir` (a process
    /// restarted in a test keeps its simulator and the faults armed in it).
    pub fn over(
        data_dir: &Path,
        store: Arc<SqliteEventStore>,
        cloud: SimCloud,
        github: SimGitHub,
        clock: SimClock,
        max_receives: u32,
    ) -> Result<Embedded, ServeError> {
        let queues_db = data_dir.join("queues.db");
        let queue = |name: &str, visibility: u64| -> Result<Arc<dyn Queue>, ServeError> {
            Ok(Arc::new(LocalQueue::open(
                &queues_db,
                name,
                max_receives,
                Duration::from_secs(visibility),
                clock.clone(),
            )?))
        };
        let compensation_queue = queue("compensation", 60)?;
        let ports = Ports {
            store: store.clone(),
            compute: Arc::new(cloud.clone()),
            github: Arc::new(jitr_infra::PacedGitHub::new(
                Arc::new(github.clone()),
                clock.clone(),
            )),
            secrets: Arc::new(SimSecrets::open(data_dir.join("cloud.db"))?),
            scaleup_queue: queue("scaleup", 60)?,
            lifecycle_queue: queue("lifecycle", 30)?,
            ec2_events_queue: queue("ec2-events", 30)?,
            bus: Arc::new(QueueBus::new(compensation_queue.clone())),
            compensation_queue,
        };
        Ok(Embedded {
            store,
            cloud,
            github,
            ports,
        })
    }
}
