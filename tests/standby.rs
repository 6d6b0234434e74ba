//! Active/standby on a shared directory (`serve --shared-dir`), on real processes: the standby
//! takes over from a SIGKILLed active with every confirmed message; a frozen (SIGSTOP) active
//! keeps the lock and is still the only writer when it resumes; two nodes started at once give
//! one active; a shared directory that turns read-only or disappears stops the active from
//! confirming, and /health says so.

use crate::common::checker::{self, publish_confirmed, stop_and_check, wait_confirms, Load};
use crate::common::pair::Pair;
use crate::common::{declare_durable, wait_until, TIMEOUT};
use lapin::options::*;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

async fn connect(uri: &str) -> Connection {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect {uri}: {e}"))
}

/// Publishes `ids` persistently to `queue` on `uri`, each confirmed.
async fn publish_all(uri: &str, queue: &str, ids: impl Iterator<Item = String>) {
    let conn = connect(uri).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for id in ids {
        let confirmation = publish_confirmed(
            &ch,
            queue,
            id.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
        assert!(
            confirmation.is_ack(),
            "{id} not confirmed: {confirmation:?}"
        );
    }
    conn.close(200, "ok".into()).await.unwrap();
}

/// The message bodies in `queue` on `uri`, consumed and acked.
async fn drain_ids(uri: &str, queue: &str) -> BTreeSet<String> {
    let drained = checker::drain(uri, queue, Duration::from_secs(2)).await;
    assert!(
        drained.seen.values().all(|(n, _)| *n == 1),
        "a message was delivered twice"
    );
    drained.seen.into_keys().collect()
}

fn ids(prefix: &str, range: std::ops::Range<u32>) -> impl Iterator<Item = String> + '_ {
    range.map(move |i| format!("{prefix}-{i}"))
}

/// The active dies under confirmed publishing; the standby replays the shared log and serves;
/// the publisher moves to the other endpoint; every confirmed message is there. The old active,
/// started again, is the standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_from_a_killed_active_with_every_confirmed_message() {
    let mut pair = Pair::start();
    assert!(
        !pair.amqp_open(1),
        "the standby must not accept AMQP clients"
    );
    assert_eq!(pair.status(1).as_deref(), Some("ok"));
    assert_eq!(pair.fence_epoch(), 1);
    declare_durable(&pair.uri(0), "orders").await;

    let load = Load::new();
    let tasks = vec![tokio::spawn(checker::publisher(
        load.clone(),
        "p".into(),
        pair.uris(0),
        0,
        "orders".into(),
        50,
    ))];
    wait_confirms(&load, 500, Duration::from_secs(60), || pair.logs()).await;

    pair.kill(0);
    let killed = Instant::now();
    let before = load.confirmed();
    pair.wait_role(1, "active", TIMEOUT);
    let active_after = killed.elapsed();
    // More confirms than the window the old active can have had outstanding: at least one of
    // them came from the new active.
    wait_until(TIMEOUT, "a confirm from the new active", || async {
        load.confirmed() > before + 50
    })
    .await;
    let first_confirm_after = killed.elapsed();
    wait_confirms(&load, 500, Duration::from_secs(60), || pair.logs()).await;
    assert_eq!(pair.fence_epoch(), 2, "the takeover advanced the epoch");

    let verdict = stop_and_check(&load, tasks, &pair.uri(1), "orders").await;
    eprintln!(
        "active/standby failover: standby active {active_after:?} and first confirm {first_confirm_after:?} after the SIGKILL; {verdict:?}"
    );

    pair.spawn(0);
    pair.wait_role(0, "standby", TIMEOUT);
    assert!(
        !pair.amqp_open(0),
        "the restarted old active must be the standby"
    );
}

/// SIGSTOP of the active: it keeps the lock, so the standby stays standby (and writes
/// nothing); after SIGCONT the old active is still the one writer and confirms more. When it
/// dies later, the standby takes over with a newer epoch and has everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_active_keeps_the_lock_and_resumes_as_the_only_writer() {
    let mut pair = Pair::start();
    declare_durable(&pair.uri(0), "q").await;
    publish_all(&pair.uri(0), "q", ids("before", 0..100)).await;
    let epoch = pair.fence_epoch();

    pair.freeze(0);
    // Many times the standby's poll period and the active's check period.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(
            pair.role(1).as_deref(),
            Some("standby"),
            "the standby took over from a frozen active:\n{}",
            pair.logs()
        );
        assert!(!pair.amqp_open(1), "the standby accepts AMQP clients");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pair.fence_epoch(), epoch, "the epoch moved while frozen");
    pair.thaw(0);

    publish_all(&pair.uri(0), "q", ids("after", 0..100)).await;
    assert_eq!(pair.role(0).as_deref(), Some("active"));
    assert_eq!(pair.role(1).as_deref(), Some("standby"));
    assert!(pair.exited(0).is_none(), "the resumed active exited");

    pair.kill(0);
    pair.wait_role(1, "active", TIMEOUT);
    assert_eq!(pair.fence_epoch(), epoch + 1);
    let got = drain_ids(&pair.uri(1), "q").await;
    let want: BTreeSet<String> = ids("before", 0..100).chain(ids("after", 0..100)).collect();
    assert_eq!(got, want);
}

/// Two nodes started at the same instant on a fresh directory: exactly one is active, the
/// other is the standby with its AMQP port closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_started_at_once_give_exactly_one_active() {
    for round in 0..3 {
        let mut pair = Pair::new();
        pair.spawn(0);
        pair.spawn(1);
        let deadline = Instant::now() + TIMEOUT;
        let active = loop {
            let roles: Vec<Option<String>> = (0..2).map(|i| pair.role(i)).collect();
            let actives: Vec<usize> = (0..2)
                .filter(|&i| roles[i].as_deref() == Some("active") && pair.amqp_open(i))
                .collect();
            let standbys = roles
                .iter()
                .filter(|r| r.as_deref() == Some("standby"))
                .count();
            if actives.len() == 1 && standbys == 1 {
                break actives[0];
            }
            assert!(
                actives.len() <= 1,
                "two actives in round {round}:\n{}",
                pair.logs()
            );
            assert!(
                Instant::now() < deadline,
                "round {round}: roles {roles:?}:\n{}",
                pair.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!pair.amqp_open(1 - active));
        assert_eq!(pair.fence_epoch(), 1, "only one takeover happened");
        declare_durable(&pair.uri(active), "q").await;
        publish_all(&pair.uri(active), "q", ids("m", 0..10)).await;
    }
}

/// The shared directory turns read-only (immutable) and later disappears (moved away, as an
/// unmounted share): each time the active stops confirming, closes its clients, and /health
/// answers 503 with the reason; when the directory is back, a node takes over and every
/// confirmed message is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_or_missing_shared_directory_stops_confirms() {
    let mut pair = Pair::start();
    declare_durable(&pair.uri(0), "q").await;
    publish_all(&pair.uri(0), "q", ids("a", 0..50)).await;

    // Read-only: chattr +i forbids creating files in the directory, even for root. A
    // publisher keeps publishing with confirms to the active all along.
    let load = Load::new();
    let publisher = tokio::spawn(checker::publisher(
        load.clone(),
        "ro".into(),
        vec![pair.uri(0)],
        0,
        "q".into(),
        20,
    ));
    wait_confirms(&load, 100, TIMEOUT, || pair.logs()).await;
    set_immutable(pair.shared_dir(), true);
    let guard = ImmutableGuard(pair.shared_dir().to_path_buf());
    wait_for_storage_problem(&pair, 0).await;
    // Once the active says so, it confirms nothing more (what was already committed may
    // still be confirmed in the moment it takes to close its clients).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let confirmed = load.confirmed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        load.confirmed(),
        confirmed,
        "publishes were confirmed on a read-only shared directory"
    );
    assert!(!pair.amqp_open(0), "the active still takes AMQP clients");
    assert!(
        !pair.amqp_open(1),
        "the standby took over a read-only directory"
    );
    load.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();
    let read_only = load.merged();
    drop(guard);

    // Writable again: one of the two takes over.
    let active = wait_for_an_active(&mut pair).await;
    publish_all(&pair.uri(active), "q", ids("b", 0..50)).await;

    // Gone: the directory is moved away (an unmounted share)...
    let moved = pair.shared_dir().with_extension("moved");
    std::fs::rename(pair.shared_dir(), &moved).unwrap();
    wait_for_storage_problem(&pair, active).await;
    // The active reports the problem, then closes its listener: under a loaded suite the port
    // was once still open when the health already said so.
    wait_until(TIMEOUT, "both to stop taking AMQP clients", || async {
        !pair.amqp_open(0) && !pair.amqp_open(1)
    })
    .await;
    // ...and an empty directory stands in its place (a bare mount point): both processes
    // saw the log formed, so neither starts an empty broker there.
    std::fs::create_dir(pair.shared_dir()).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..2 {
        assert_eq!(pair.role(i).as_deref(), Some("standby"), "{}", pair.logs());
        assert_eq!(pair.status(i).as_deref(), Some("storage_unavailable"));
    }
    assert!(
        !pair.shared_dir().join("db").exists(),
        "a log was formed in the stand-in"
    );
    // The share comes back in its place. The stand-in is set aside, not removed: a process
    // may be creating a file in it at this instant.
    std::fs::rename(
        pair.shared_dir(),
        pair.shared_dir().with_extension("stand-in"),
    )
    .unwrap();
    std::fs::rename(&moved, pair.shared_dir()).unwrap();

    let active = wait_for_an_active(&mut pair).await;
    let got = drain_ids(&pair.uri(active), "q").await;
    let mut want: BTreeSet<String> = ids("a", 0..50).chain(ids("b", 0..50)).collect();
    want.extend(read_only.confirmed.iter().cloned());
    assert!(
        want.is_subset(&got),
        "lost: {:?}\n{}",
        want.difference(&got).take(10).collect::<Vec<_>>(),
        pair.logs()
    );
    let published: BTreeSet<String> = want.union(&read_only.attempted).cloned().collect();
    assert!(
        got.is_subset(&published),
        "messages never published were consumed"
    );
}

/// Fencing: when the fencing epoch moves past the active's own (as another process's takeover
/// makes it), the active exits at once with code 75, and the standby takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_whose_epoch_was_overtaken_exits_at_once() {
    let mut pair = Pair::start();
    declare_durable(&pair.uri(0), "q").await;
    publish_all(&pair.uri(0), "q", ids("m", 0..20)).await;
    std::fs::write(pair.shared_dir().join("fence"), "41\n").unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = pair.exited(0) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the fenced active did not exit:\n{}",
            pair.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(75), "{}", pair.logs());
    assert!(pair.log(0).contains("fenced"), "{}", pair.log(0));
    pair.wait_role(1, "active", TIMEOUT);
    assert_eq!(pair.fence_epoch(), 42);
    let got = drain_ids(&pair.uri(1), "q").await;
    assert_eq!(got, ids("m", 0..20).collect::<BTreeSet<_>>());
}

fn set_immutable(dir: &std::path::Path, on: bool) {
    let status = std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(dir)
        .status()
        .expect("chattr (e2fsprogs) must be installed");
    assert!(status.success(), "chattr failed on {}", dir.display());
}

/// Makes the directory writable again even when the test fails, so it can be removed.
struct ImmutableGuard(std::path::PathBuf);

impl Drop for ImmutableGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

async fn wait_for_storage_problem(pair: &Pair, i: usize) {
    wait_until(TIMEOUT, "the active to report its storage problem", || async {
        matches!(pair.health(i), Some((503, h)) if h["status"] == "storage_unavailable" && h["detail"].is_string())
    })
    .await;
}

async fn wait_for_an_active(pair: &mut Pair) -> usize {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for i in 0..2 {
            if pair.role(i).as_deref() == Some("active")
                && pair.status(i).as_deref() == Some("ok")
                && pair.amqp_open(i)
            {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no active:\n{}", pair.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
