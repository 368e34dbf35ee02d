//! Shared formatting for operator reports: moments and event details.

use std::time::{Duration, UNIX_EPOCH};

use jitr_domain::{RunnerEvent, TerminationReason, Timestamp};

/// RFC 3339 (UTC, milliseconds) for a moment.
pub fn rfc3339(at: Timestamp) -> String {
    let ms = u64::try_from(at.0).unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A duration in milliseconds, for people (`1m 5s`).
pub fn span(ms: u64) -> String {
    let secs = ms / 1000;
    if secs == 0 {
        return format!("{ms}ms");
    }
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Why a termination is owed, in words.
pub fn reason(reason: &TerminationReason) -> String {
    match reason {
        TerminationReason::Failure { stage } => format!("failed ({})", stage.as_str()),
        TerminationReason::DrainGraceOver => "drain grace over".into(),
        TerminationReason::Operator => "operator request".into(),
    }
}

/// What a record learnt by asking GitHub says of itself.
fn polled(source: jitr_domain::JobSource) -> &'static str {
    match source {
        jitr_domain::JobSource::Webhook => "",
        jitr_domain::JobSource::Poll => " (asked GitHub: the webhook was lost)",
    }
}

/// The job GitHub assigned, as a history line says it.
fn assigned(job: Option<&jitr_domain::JobRef>) -> String {
    job.map(|j| format!("job {} of {}/{}", j.job_id, j.owner, j.repo))
        .unwrap_or_default()
}

/// One line describing what an event says (never a secret: the log holds none).
pub fn describe(event: &RunnerEvent) -> String {
    match event {
        RunnerEvent::Requested {
            job,
            attempt,
            labels,
            spec,
            ..
        } => format!(
            "job {} (run {}) attempt {attempt}, labels [{}], {} ({} vCPU) from {}",
            job.job_id,
            job.run_id,
            labels.join(", "),
            spec.instance_type,
            spec.vcpus,
            spec.image
        ),
        RunnerEvent::LaunchIntended {
            client_token,
            market,
            ..
        } => format!("{} launch, client token {client_token}", market.as_str()),
        RunnerEvent::LaunchRejected { code, class, .. } => format!("{code} ({class:?})"),
        RunnerEvent::Launched {
            instance_id,
            instance_type,
            vcpus,
            market,
            ..
        } => format!(
            "{instance_id} {instance_type} ({vcpus} vCPU, {})",
            market.as_str()
        ),
        RunnerEvent::TokenMinted { runner_name, .. } => format!("runner {runner_name}"),
        RunnerEvent::Parked { instance_id, .. } => {
            format!("{instance_id} stopped, no JIT config: parked for a job")
        }
        RunnerEvent::Woken {
            instance_id,
            for_job,
            ..
        } => format!(
            "{instance_id} started{}",
            for_job
                .as_ref()
                .map(|j| format!(" for job {} of {}/{}", j.job_id, j.owner, j.repo))
                .unwrap_or_default()
        ),
        RunnerEvent::JobStarted { source, job, .. } => {
            format!("{}{}", assigned(job.as_ref()), polled(*source))
        }
        RunnerEvent::JobCompleted {
            conclusion,
            source,
            job,
            ..
        } => format!(
            "{}{}{}",
            conclusion.clone().unwrap_or_default(),
            assigned(job.as_ref()).replace("job", " job"),
            polled(*source)
        ),
        RunnerEvent::DemandEnded { ending, .. } => match ending {
            jitr_domain::DemandEnding::Cancelled => {
                "the job it stood for was cancelled while queued: the runner is spare capacity"
                    .into()
            }
            jitr_domain::DemandEnding::TakenBy { runner_name } => format!(
                "the job it stood for was taken by runner {runner_name}: the runner is spare capacity"
            ),
        },
        RunnerEvent::DemandMoved { job, .. } => format!(
            "its job was taken by another runner: it now stands for job {} of {}/{}",
            job.job_id, job.owner, job.repo
        ),
        RunnerEvent::DeregistrationRefused { reason, .. } => {
            format!("GitHub refused to deregister it (busy): kept; {reason}")
        }
        RunnerEvent::Failed { stage, reason, .. } => format!("{}: {reason}", stage.as_str()),
        RunnerEvent::TerminationRequested {
            reason: why,
            instance_id,
            ..
        } => match instance_id {
            Some(id) => format!("{id}: {}", reason(why)),
            None => format!("look up by client token: {}", reason(why)),
        },
        RunnerEvent::StrayLaunched {
            instance_id,
            instance_type,
            vcpus,
            client_token,
            ..
        } => format!(
            "{instance_id} {instance_type} ({vcpus} vCPU) from launch {client_token}, which the runner could not take: terminating it"
        ),
        RunnerEvent::SpotInterruptionWarned {
            instance_id,
            job_started,
            ..
        } => {
            if *job_started {
                format!(
                    "EC2 will reclaim spot instance {instance_id}: the job running on it is cut"
                )
            } else {
                format!("EC2 will reclaim spot instance {instance_id} before the job started")
            }
        }
        RunnerEvent::StrayTerminated {
            instance_id,
            evidence,
            ..
        } => format!("stray {instance_id} gone ({})", evidence.as_str()),
        RunnerEvent::Terminated {
            instance_id,
            evidence,
            ..
        } => match instance_id {
            Some(id) => format!("{id} gone ({})", evidence.as_str()),
            None => format!("confirmed never launched ({})", evidence.as_str()),
        },
    }
}
