//! `LogNode` end to end on a real RocksDB in a temporary directory: open a one-member group,
//! propose through the group-commit batcher, apply, restart from snapshot + log, refuse a second
//! process on the same directory, and fail connections whose entries cannot be written.

use bytes::Bytes;
use raftmq_broker::ids::{ChannelRef, ConnId};
use raftmq_broker::log::{proposal_channel, EffectSink, Proposer};
use raftmq_broker::machine::command::{Command, Publish, PublishedMessage};
use raftmq_broker::machine::effect::Effect;
use raftmq_broker::reply_code::CONNECTION_FORCED;
use raftmq_raft::{LogConfig, LogNode, LogOpenError, NodeInfo, Role, SnapshotBySize, SYNC_WINDOW};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Records every effect batch it is given, and the order in which entries were dispatched and
/// reported durable.
#[derive(Default)]
struct RecordingSink {
    batches: Mutex<Vec<Vec<Effect>>>,
    events: Mutex<Vec<SinkEvent>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum SinkEvent {
    /// The effects of the entry at this index, holding a promise or not.
    Dispatched { index: u64, promise: bool },
    /// Every entry up to this index is durable.
    Durable(u64),
}

impl RecordingSink {
    fn effects(&self) -> Vec<Effect> {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The highest index reported durable.
    fn durable_through(&self) -> u64 {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                SinkEvent::Durable(index) => Some(*index),
                SinkEvent::Dispatched { .. } => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// The index of the last entry whose effects were dispatched; with `promises_only`, of the
    /// last whose effects held a promise.
    fn last_dispatched(&self, promises_only: bool) -> u64 {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                SinkEvent::Dispatched { index, promise } if *promise || !promises_only => {
                    Some(*index)
                }
                SinkEvent::Dispatched { .. } | SinkEvent::Durable(_) => None,
            })
            .max()
            .unwrap_or(0)
    }
}

impl EffectSink for RecordingSink {
    fn dispatch(&self, index: u64, effects: Vec<Effect>) {
        let promise = effects.iter().any(Effect::is_promise);
        self.events
            .lock()
            .unwrap()
            .push(SinkEvent::Dispatched { index, promise });
        self.batches.lock().unwrap().push(effects);
    }

    fn durable(&self, index: u64) {
        self.events.lock().unwrap().push(SinkEvent::Durable(index));
    }
}

fn config(dir: &Path) -> LogConfig {
    let node = NodeInfo {
        raft_addr: "127.0.0.1:0".into(),
        amqp_addr: "127.0.0.1:5672".into(),
        zone: "test-a".into(),
    };
    let mut config = LogConfig::new(1, dir, node);
    // 140 MiB of writes per new node; `wal_prewrite`'s own tests cover it.
    config.wal_prewrite_mib = 0;
    config
}

async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opens a one-member node under `dir` (with a transport listener, so never lone, when
/// `reachable`), starts its proposer and its first life.
async fn start_node(
    dir: &Path,
    reachable: bool,
    sink: Arc<RecordingSink>,
) -> (LogNode, Proposer, tokio::task::JoinHandle<()>) {
    let mut config = config(&dir.join("data"));
    if reachable {
        config.raft_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    let node = tokio::time::timeout(Duration::from_secs(30), LogNode::open(config, sink))
        .await
        .expect("opens in time")
        .expect("open");
    let (proposer, proposals) = proposal_channel(1024);
    let task = node.spawn_proposer(proposals);
    node.start_life(1, true).await.expect("node life started");
    (node, proposer, task)
}

/// Closes the proposal channel, waits for the proposer to finish, and shuts the node down.
async fn stop_node(node: LogNode, proposer: Proposer, task: tokio::task::JoinHandle<()>) {
    drop(proposer);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("proposer exits when the channel closes")
        .unwrap();
    node.shutdown().await;
}

fn conn(seq: u64) -> ConnId {
    ConnId {
        node: 1,
        epoch: 1,
        seq,
    }
}

fn queue_declare(seq: u64, queue: &str) -> Command {
    Command::QueueDeclare {
        ch: ChannelRef {
            conn: conn(seq),
            number: 1,
            generation: 0,
        },
        queue: queue.to_string(),
        server_named: false,
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: Default::default(),
    }
}

/// The log's last applied index agrees with the machine's own `last_index`.
fn applied_index(node: &LogNode) -> u64 {
    node.metrics().last_applied.map(|l| l.index).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_directory_forms_a_one_member_group_and_applies_proposed_commands() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(RecordingSink::default());
    let node = LogNode::open(config(&dir.path().join("data")), sink.clone())
        .await
        .expect("open");
    assert_eq!(node.role(), Role::Standalone);
    assert!(dir.path().join("data/raftmq.lock").exists());
    assert!(dir.path().join("data/db").is_dir());

    let (proposer, proposals) = proposal_channel(1024);
    let task = node.spawn_proposer(proposals);
    node.start_life(1, true).await.expect("node life started");
    for i in 0..5 {
        proposer
            .submit(queue_declare(i, &format!("q{i}")))
            .await
            .unwrap();
    }
    let status = node.status();
    wait_until("5 commands applied", Duration::from_secs(10), || {
        status.applied_counts().1 >= 6
    })
    .await;
    let last = applied_index(&node);
    assert_eq!(
        node.read_state(|s| s.last_index),
        last,
        "the machine saw every applied entry"
    );
    assert!(
        node.read_state(|s| s.now_ms) > 1_600_000_000_000,
        "entries carry the wall clock"
    );

    drop(proposer);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("proposer exits when the channel closes")
        .unwrap();
    // Effects (if the machine produced any) only name connections that proposed something.
    for effect in sink.effects() {
        assert!(effect.conn().seq < 5, "unexpected effect target {effect:?}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_restores_the_state_from_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Small enough that the run below crosses several snapshots and purges.
    cfg.snapshot_every_entries = 10;
    cfg.logs_kept_after_snapshot = 3;
    // No idle tick entries: the state read before shutdown must be the last one written.
    cfg.tick_interval = Duration::from_secs(3600);

    let node = LogNode::open(cfg.clone(), Arc::new(RecordingSink::default()))
        .await
        .expect("open");
    let (proposer, proposals) = proposal_channel(16);
    let _task = node.spawn_proposer(proposals);
    node.start_life(1, true).await.expect("node life started");
    for i in 0..40 {
        proposer.submit(queue_declare(i, "q")).await.unwrap();
        // One entry per command most of the time, so the log grows past the snapshot policy.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let status = node.status();
    wait_until("40 commands applied", Duration::from_secs(10), || {
        status.applied_counts().1 >= 41
    })
    .await;
    wait_until("a snapshot", Duration::from_secs(10), || {
        status.metrics().snapshot.is_some()
    })
    .await;
    let before = node.read_state(|s| s.clone());
    assert!(before.last_index > 20, "last index {}", before.last_index);
    // Shutdown drains the proposer even while a Proposer handle is still alive.
    node.shutdown().await;
    assert!(
        proposer.submit(queue_declare(99, "q")).await.is_err(),
        "the log is closed after shutdown"
    );

    let node = LogNode::open(cfg, Arc::new(RecordingSink::default()))
        .await
        .expect("reopen");
    assert_eq!(node.role(), Role::Standalone);
    let metrics = node.metrics();
    assert!(
        metrics.snapshot.is_some(),
        "the snapshot survived the restart"
    );
    assert!(
        metrics.purged.is_some(),
        "the log was purged behind the snapshot"
    );
    let after = node.read_state(|s| s.clone());
    // Reopening appends (and applies) at least the new leader's blank entry, never loses one.
    assert!(
        after.last_index >= before.last_index,
        "restored {} < {}",
        after.last_index,
        before.last_index
    );
    assert_eq!(
        after.now_ms, before.now_ms,
        "the machine's clock is restored exactly"
    );
    assert_eq!(after.last_index, applied_index(&node));
    node.shutdown().await;
}

fn publish(seq: u64, queue: &str, body: Vec<u8>) -> Command {
    Command::Publish {
        ch: ChannelRef {
            conn: conn(seq),
            number: 1,
            generation: 0,
        },
        publish: Publish {
            exchange: String::new(),
            routing_key: queue.to_string(),
            mandatory: false,
            confirm_seq: None,
            message: PublishedMessage {
                properties: Bytes::from_static(&[0, 0]),
                body: Bytes::from(body),
                persistent: true,
                priority: 0,
                expiration_ms: None,
            },
        },
    }
}

fn body(i: u64) -> Vec<u8> {
    let mut body = format!("message {i} ").into_bytes();
    body.resize(4096, (i % 251) as u8);
    body
}

/// The bodies of a queue's ready messages, in order.
fn bodies(node: &LogNode, queue: &str) -> Vec<Vec<u8>> {
    node.read_state(|s| {
        s.queue(queue)
            .map(|q| q.ready.values().map(|m| m.body.to_vec()).collect())
            .unwrap_or_default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_log_is_snapshotted_by_size_and_restored_with_every_body() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Never by entry count here: only the size rule can take these snapshots.
    cfg.snapshot_every_entries = 1_000_000;
    cfg.snapshot_by_size = SnapshotBySize {
        min_bytes: 256 * 1024,
        fraction_of_last: 0.5,
        idle_min_bytes: u64::MAX,
    };
    cfg.tick_interval = Duration::from_secs(3600);

    let node = LogNode::open(cfg.clone(), Arc::new(RecordingSink::default()))
        .await
        .expect("open");
    let (proposer, proposals) = proposal_channel(1024);
    let _task = node.spawn_proposer(proposals);
    node.start_life(1, true).await.expect("node life started");
    proposer.submit(queue_declare(1, "big")).await.unwrap();
    // 600 messages of 4 KiB: 2.4 MiB of log, several times the minimum.
    for i in 0..600 {
        proposer.submit(publish(1, "big", body(i))).await.unwrap();
    }
    let status = node.status();
    wait_until("600 messages queued", Duration::from_secs(20), || {
        bodies(&node, "big").len() == 600
    })
    .await;
    wait_until("a snapshot by size", Duration::from_secs(20), || {
        status.metrics().snapshot.is_some()
    })
    .await;
    let snapshot_index = status.metrics().snapshot.map(|s| s.index).unwrap();
    assert!(
        snapshot_index < 1_000_000,
        "taken although the entry count is far below its policy"
    );
    let before = bodies(&node, "big");
    node.shutdown().await;

    let node = LogNode::open(cfg, Arc::new(RecordingSink::default()))
        .await
        .expect("reopen");
    assert!(
        node.metrics().snapshot.is_some(),
        "the snapshot survived the restart"
    );
    let after = bodies(&node, "big");
    assert_eq!(after.len(), 600);
    assert!(after == before, "every body is back, in order");
    for (i, b) in after.iter().enumerate() {
        assert_eq!(b, &body(i as u64), "message {i}");
    }
    node.shutdown().await;
}

/// A log too small for a snapshot under load gets one once it goes quiet, covering all of it,
/// so a restart after a fill has nothing to replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_log_is_snapshotted_once_it_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.snapshot_every_entries = 1_000_000;
    cfg.snapshot_by_size = SnapshotBySize {
        min_bytes: u64::MAX,
        fraction_of_last: 0.5,
        idle_min_bytes: 256 * 1024,
    };
    cfg.tick_interval = Duration::from_secs(3600);
    let node = LogNode::open(cfg, Arc::new(RecordingSink::default()))
        .await
        .expect("open");
    let (proposer, proposals) = proposal_channel(1024);
    let _task = node.spawn_proposer(proposals);
    node.start_life(1, true).await.expect("node life started");
    proposer.submit(queue_declare(1, "quiet")).await.unwrap();
    for i in 0..600 {
        proposer.submit(publish(1, "quiet", body(i))).await.unwrap();
    }
    wait_until("600 messages queued", Duration::from_secs(20), || {
        bodies(&node, "quiet").len() == 600
    })
    .await;
    let applied = node.metrics().last_applied.map(|l| l.index);
    let status = node.status();
    wait_until(
        "a snapshot of the quiet log",
        Duration::from_secs(20),
        || status.metrics().snapshot.map(|s| s.index) >= applied,
    )
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_on_a_locked_directory_fails_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = LogNode::open(config(dir.path()), Arc::new(RecordingSink::default()))
        .await
        .expect("open");

    let started = Instant::now();
    let err = match LogNode::open(config(dir.path()), Arc::new(RecordingSink::default())).await {
        Ok(_) => panic!("a second open on a locked directory must fail"),
        Err(e) => e,
    };
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "it must not wait for the lock"
    );
    assert!(matches!(err, LogOpenError::Lock(_)), "{err:?}");
    let text = err.to_string();
    let expected = format!(
        "data directory {} is in use by another raftmq process (pid {})",
        dir.path().display(),
        std::process::id()
    );
    assert_eq!(text, expected);

    // The first node is unaffected, and after it shuts down the directory opens again.
    assert_eq!(first.role(), Role::Standalone);
    first.shutdown().await;
    let again = LogNode::open(config(dir.path()), Arc::new(RecordingSink::default()))
        .await
        .expect("reopen");
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_turns_ten_thousand_commands_into_few_entries() {
    let dir = tempfile::tempdir().unwrap();
    let node = LogNode::open(config(dir.path()), Arc::new(RecordingSink::default()))
        .await
        .expect("open");
    let (proposer, proposals) = proposal_channel(4096);
    let _task = node.spawn_proposer(proposals);
    node.start_life(1, true).await.expect("node life started");
    let status = node.status();
    let (entries_before, commands_before) = status.applied_counts();

    let started = Instant::now();
    for i in 0..10_000u64 {
        proposer
            .submit(Command::ConnectionClosed { conn: conn(i) })
            .await
            .unwrap();
    }
    wait_until("10 000 commands applied", Duration::from_secs(30), || {
        status.applied_counts().1 - commands_before >= 10_000
    })
    .await;
    let (entries_after, commands_after) = status.applied_counts();
    let entries = entries_after - entries_before;
    assert_eq!(commands_after - commands_before, 10_000);
    eprintln!(
        "group commit: {entries} entries for 10 000 commands in {:?}",
        started.elapsed()
    );
    assert!(
        entries < 1000,
        "{entries} entries for 10 000 commands in {:?}",
        started.elapsed()
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ticks_propose_empty_entries_that_move_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.tick_interval = Duration::from_millis(20);
    let node = LogNode::open(cfg, Arc::new(RecordingSink::default()))
        .await
        .expect("open");
    let (_proposer, proposals) = proposal_channel(16);
    let _task = node.spawn_proposer(proposals);
    node.start_life(1, true).await.expect("node life started");
    let status = node.status();
    let start_entries = status.applied_counts().0;
    wait_until("three tick entries", Duration::from_secs(5), || {
        status.applied_counts().0 >= start_entries + 3
    })
    .await;
    let clock = node.read_state(|s| s.now_ms);
    wait_until("the clock to move", Duration::from_secs(5), || {
        node.read_state(|s| s.now_ms) > clock
    })
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_cannot_be_written_close_their_connections() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(RecordingSink::default());
    let node = LogNode::open(config(dir.path()), sink.clone())
        .await
        .expect("open");
    let (proposer, proposals) = proposal_channel(16);
    let _task = node.spawn_proposer(proposals);
    node.start_life(1, true).await.expect("node life started");
    // Raft stops underneath the proposer, as on a fatal storage error.
    node.raft().shutdown().await.unwrap();
    proposer.submit(queue_declare(7, "q")).await.unwrap();
    proposer.submit(queue_declare(8, "q")).await.unwrap();
    wait_until("both connections told", Duration::from_secs(5), || {
        let failed: Vec<u64> = sink
            .effects()
            .iter()
            .filter_map(|e| match e {
                Effect::ConnectionError {
                    conn,
                    reply_code: CONNECTION_FORCED,
                    ..
                } => Some(conn.seq),
                _ => None,
            })
            .collect();
        failed.contains(&7) && failed.contains(&8)
    })
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_another_nodes_directory_fails_instead_of_waiting_for_an_election() {
    let dir = tempfile::tempdir().unwrap();
    let node = LogNode::open(config(dir.path()), Arc::new(RecordingSink::default()))
        .await
        .expect("open");
    node.shutdown().await;

    let mut other = config(dir.path());
    other.node_id = 2;
    let started = Instant::now();
    let err = match LogNode::open(other, Arc::new(RecordingSink::default())).await {
        Ok(_) => panic!("node 2 must not open node 1's log"),
        Err(e) => e,
    };
    assert!(
        matches!(err, LogOpenError::ForeignNode { node_id: 2, .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The failed open released the directory again.
    let node = LogNode::open(config(dir.path()), Arc::new(RecordingSink::default()))
        .await
        .expect("reopen as node 1");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_limits_bound_the_commands_and_bytes_of_one_entry() {
    use bytes::Bytes;
    use raftmq_broker::machine::command::{Publish, PublishedMessage};

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_commands_per_entry = 100;
    cfg.max_bytes_per_entry = 32 * 1024;
    let node = LogNode::open(cfg, Arc::new(RecordingSink::default()))
        .await
        .expect("open");
    let (proposer, proposals) = proposal_channel(4096);
    let status = node.status();

    // Queue everything before the batcher starts, so only the limits split the batches.
    for i in 0..1000u64 {
        proposer
            .submit(Command::ConnectionClosed { conn: conn(i) })
            .await
            .unwrap();
    }
    let (entries_before, commands_before) = status.applied_counts();
    let _task = node.spawn_proposer(proposals);
    node.start_life(1, true).await.expect("node life started");
    wait_until("1000 commands applied", Duration::from_secs(10), || {
        status.applied_counts().1 - commands_before >= 1000
    })
    .await;
    let entries = status.applied_counts().0 - entries_before;
    assert!(
        (10..=15).contains(&entries),
        "1000 commands at 100 per entry took {entries} entries"
    );

    // 10 KiB bodies against a 32 KiB entry limit: at most 3 per entry. The counts are read
    // before the first publish is queued: the running batcher may apply it alone at once.
    let (entries_before, commands_before) = status.applied_counts();
    let ch = ChannelRef {
        conn: conn(1),
        number: 1,
        generation: 0,
    };
    for _ in 0..30 {
        let publish = Publish {
            exchange: String::new(),
            routing_key: "q".into(),
            mandatory: false,
            confirm_seq: None,
            message: PublishedMessage {
                properties: Bytes::new(),
                body: Bytes::from(vec![7u8; 10 * 1024]),
                persistent: false,
                priority: 0,
                expiration_ms: None,
            },
        };
        proposer
            .submit(Command::Publish { ch, publish })
            .await
            .unwrap();
    }
    wait_until("30 publishes applied", Duration::from_secs(10), || {
        status.applied_counts().1 - commands_before >= 30
    })
    .await;
    let entries = status.applied_counts().0 - entries_before;
    assert!(
        entries >= 10,
        "30 publishes of 10 KiB with a 32 KiB limit took only {entries} entries"
    );
    node.shutdown().await;
}

/// A lone node (no listener for peers, the only member) fsyncs its log for entries that promise
/// something to a client, such as a declaration, and not for entries whose loss in a power
/// failure breaks no promise, such as gets and publishes outside confirm mode: those get one
/// fsync for all of them within `SYNC_WINDOW`. A node that peers can reach fsyncs every entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_fsyncs_only_entries_that_promise_something() {
    for reachable in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(RecordingSink::default());
        let (node, proposer, task) = start_node(dir.path(), reachable, sink.clone()).await;
        let status = node.status();
        // One command at a time, each applied before the next: one entry each.
        let run = |commands: Vec<Command>| {
            let proposer = proposer.clone();
            let status = status.clone();
            async move {
                for command in commands {
                    let before = status.applied_counts().1;
                    proposer.submit(command).await.unwrap();
                    wait_until("the command applied", Duration::from_secs(10), || {
                        status.applied_counts().1 > before
                    })
                    .await;
                }
            }
        };
        let start = status.log_syncs();
        run((0..5).map(|i| queue_declare(i, &format!("q{i}"))).collect()).await;
        // A lone node may apply a declaration before its fsync, which then follows: wait until
        // the last one is reported durable, so that no fsync is still to come.
        wait_until(
            "the last declaration reported durable",
            Duration::from_secs(10),
            || sink.durable_through() >= sink.last_dispatched(false),
        )
        .await;
        let declared = status.log_syncs();
        assert!(
            declared >= start + 5,
            "each declaration fsync'ed (reachable: {reachable}): {start} -> {declared}"
        );
        let get = |i: u64| Command::Get {
            ch: ChannelRef {
                conn: conn(i),
                number: 1,
                generation: 0,
            },
            queue: "q0".into(),
            no_ack: false,
        };
        let started = std::time::Instant::now();
        run((0..20)
            .flat_map(|i| [get(i), publish(i, "q1", body(i))])
            .collect())
        .await;
        let elapsed = started.elapsed();
        let got = status.log_syncs();
        if reachable {
            assert!(
                got >= declared + 40,
                "every get and publish fsync'ed: {declared} -> {got}"
            );
        } else {
            // At most one fsync per window went by while they ran, not one per entry.
            let windows = (elapsed.as_millis() / SYNC_WINDOW.as_millis()) as u64;
            assert!(
                got <= declared + 1 + windows,
                "gets and unconfirmed publishes fsync'ed one by one on a lone node: {declared} -> {got} in {elapsed:?}"
            );
            // Nothing promised them an fsync, yet the writer makes one within the window.
            let last = sink.last_dispatched(false);
            wait_until(
                "the unsynced publishes fsync'ed within the window",
                Duration::from_secs(10),
                || sink.durable_through() >= last,
            )
            .await;
            // A window after the last fsync, appends like these are written on openraft's own
            // thread (`LogWriter::write_now`): the writer thread, which never saw them, still
            // makes them durable within the window and tells the sink.
            tokio::time::sleep(SYNC_WINDOW + Duration::from_millis(100)).await;
            run((20..40)
                .flat_map(|i| [get(i), publish(i, "q1", body(i))])
                .collect())
            .await;
            // Ten windows: generous for a loaded machine, short of the seconds it takes when
            // only a later queued append happens to cover them.
            let last = sink.last_dispatched(false);
            wait_until(
                "directly written entries fsync'ed within the window",
                SYNC_WINDOW * 10,
                || sink.durable_through() >= last,
            )
            .await;
        }
        stop_node(node, proposer, task).await;
    }
}

/// Every entry whose effects promise something (here, declare-oks) is reported durable to the
/// effect sink, which is what releases those effects to clients. A node that peers can reach
/// fsyncs each entry before it is applied, so the report comes before the effects and the
/// broker holds nothing; a lone node may apply first, and the report follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_promise_is_reported_durable_and_a_reachable_node_reports_it_first() {
    for reachable in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(RecordingSink::default());
        let (node, proposer, task) = start_node(dir.path(), reachable, sink.clone()).await;
        for i in 0..10 {
            proposer
                .submit(queue_declare(i, &format!("q{i}")))
                .await
                .unwrap();
        }
        wait_until(
            "ten declare-oks dispatched",
            Duration::from_secs(10),
            || sink.effects().iter().filter(|e| e.is_promise()).count() >= 10,
        )
        .await;
        let last = sink.last_dispatched(true);
        assert!(last > 0, "promises dispatched");
        wait_until(
            "the last declaration reported durable",
            Duration::from_secs(10),
            || sink.durable_through() >= last,
        )
        .await;
        if reachable {
            let events = sink.events.lock().unwrap().clone();
            let mut seen = 0;
            for event in events {
                match event {
                    SinkEvent::Durable(index) => seen = seen.max(index),
                    SinkEvent::Dispatched {
                        index,
                        promise: true,
                    } => assert!(
                        seen >= index,
                        "entry {index} applied before it was reported durable (up to {seen})"
                    ),
                    SinkEvent::Dispatched { .. } => {}
                }
            }
        }
        stop_node(node, proposer, task).await;
    }
}
