//! Issue 10: background GitHub work spends at most its share of each
//! installation's hourly rate limit, so that minting a runner's JIT config never
//! finds the limit spent. On the embedded default with the GitHub stand-in
//! enforcing a primary rate limit of 5,000 requests an hour.

use jitr_domain::RunnerStatus;
use jitr_e2e::world::World;
use jitr_infra::{EventStore, GitHub, QueuedJob};

const REPOSITORIES: u64 = 300;
const LIMIT: u64 = 5_000;

/// A world serving 300 allowlisted repositories, each with one queued run of one
/// job on GitHub, the background share set to `share_pct`; GitHub limited to
/// 5,000 requests an hour.
fn world(share_pct: u64) -> World {
    let world = World::with_policy(|p| {
        p.allowlist = (1..=REPOSITORIES)
            .map(|n| format!("acme/repo-{n}"))
            .collect();
        p.github_background_share_pct = share_pct;
    });
    world.github.limit_requests(LIMIT, world.clock.clock());
    for n in 1..=REPOSITORIES {
        world
            .github
            .queue_job(&QueuedJob {
                owner: "acme".into(),
                repo: format!("repo-{n}"),
                job_id: 10_000 + n,
                run_id: 20_000 + n,
                // A job jitr does not serve: the listing costs the same.
                labels: vec!["windows".into()],
                name: "build".into(),
            })
            .unwrap();
    }
    world
}

/// One hour of rebalancer passes, one a minute. Returns the requests the passes
/// sent and how many repositories they looked at in full.
async fn an_hour_of_rebalancing(world: &World) -> (u64, usize) {
    let (mut requests, mut checked) = (0, 0);
    for minute in 0..60 {
        if minute > 0 {
            world.advance(60);
        }
        let report = world.app.rebalancer.tick(world.now()).await.unwrap();
        assert_eq!(report.repositories, REPOSITORIES as usize);
        requests += report.requests;
        checked += report.repositories_checked;
    }
    // Still inside GitHub's window (an hour from the first request).
    world.advance(30);
    (requests, checked)
}

/// A job in `acme/repo-1` labelled for jitr, through scale-up: its runner's
/// status afterwards (`ready` once its JIT config was minted).
async fn mint(world: &World) -> RunnerStatus {
    let mut queued = world.message("queued", 1, None);
    queued.repo = "repo-1".into();
    world.scaleup.handle(&queued, 1, world.now()).await.unwrap();
    let stream = jitr_domain::StreamId::parse("acme/repo-1#1#1").unwrap();
    world.store.head(&stream).await.unwrap().unwrap().status
}

#[tokio::test]
async fn an_hour_of_rebalancing_300_repositories_spends_its_share_and_minting_still_works() {
    let world = world(20);
    let (requests, checked) = an_hour_of_rebalancing(&world).await;
    let sent = world.github.usage(1).sent;
    eprintln!(
        "share 20 %: {requests} requests in the hour ({sent} sent in all), {checked} repository looks"
    );
    assert!(requests <= LIMIT / 5, "{requests} > 20 % of {LIMIT}");
    assert!(
        requests >= LIMIT / 5 - 2,
        "the budget is used, not starved: {requests}"
    );
    assert!(
        checked >= REPOSITORIES as usize,
        "every repository looked at within the hour: {checked}"
    );
    assert_eq!(mint(&world).await, RunnerStatus::Ready);

    // Without a reserve (all of the limit for background work), the same hour
    // spends the installation's limit and the mint finds nothing left: the
    // instance waits for its JIT config, retried (a rate limit is transient).
    let greedy = world_at_full_share().await;
    assert_eq!(mint(&greedy).await, RunnerStatus::Booting);
}

async fn world_at_full_share() -> World {
    let world = world(100);
    let (requests, _) = an_hour_of_rebalancing(&world).await;
    eprintln!("share 100 %: {requests} requests in the hour");
    assert!(requests >= LIMIT - 2, "{requests}");
    world
}
