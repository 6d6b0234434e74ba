//! Cluster mode on real processes: three nodes in three zones on loopback, clients on every
//! node, leaders and followers killed with SIGKILL, frozen with SIGSTOP, cut off by fault
//! injection; a checker that fails on any confirmed message lost, any message that was never
//! published, or any message applied twice.

use crate::common::checker::{self, publish_confirmed, stop_and_check, Load};
use crate::common::cluster::{Cluster, SECRET};
use crate::common::{message_count, run_json, run_ok, wait_until, BIN};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What a follower logs when it campaigns because the leader's process died.
const LEADER_GONE: &str = "the leader's process is gone";

async fn declare_durable(cluster: &Cluster, node: usize, queue: &str) {
    crate::common::declare_durable(&cluster.uri(node), queue).await
}

/// `count` publishers named `{prefix}{i}`, publisher i starting on node i.
fn publishers(
    load: &std::sync::Arc<Load>,
    cluster: &Cluster,
    count: usize,
    prefix: &str,
    queue: &str,
    window: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..count)
        .map(|i| {
            let name = format!("{prefix}{i}");
            tokio::spawn(checker::publisher(
                load.clone(),
                name,
                uris(cluster),
                i,
                queue.into(),
                window,
            ))
        })
        .collect()
}

/// A connection to node `node` with a channel in confirm mode.
async fn confirming_channel(cluster: &Cluster, node: usize) -> (lapin::Connection, lapin::Channel) {
    let conn = cluster.connect(node).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

fn uris(cluster: &Cluster) -> Vec<String> {
    (0..cluster.nodes.len()).map(|i| cluster.uri(i)).collect()
}

/// Waits until `load` has `more` confirms beyond its current count.
async fn wait_confirms(load: &Load, more: u64, timeout: Duration, cluster: &Cluster) {
    checker::wait_confirms(load, more, timeout, || cluster.logs()).await
}

/// Any node serves: a publish through a follower is confirmed and consumed on another node;
/// /health and `raftmq cluster status` show the members, zones and the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_every_node_serves() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    assert_eq!(cluster.role(follower).as_deref(), Some("follower"));
    let leader_id = cluster.nodes[leader].id;
    // A new group is formed by its lowest-numbered member alone (the others wait for it), so
    // the first election has one candidate: node 1 leads. (Usually in term 1; a vote request
    // sent before a peer listens makes it campaign once more, so the term is not asserted.)
    assert_eq!(leader_id, 1, "{}", cluster.logs());
    assert_eq!(cluster.health(other).unwrap()["leader"], leader_id);

    declare_durable(&cluster, follower, "everywhere").await;
    let (_conn, ch) = confirming_channel(&cluster, follower).await;
    for i in 0..50 {
        let persistent = BasicProperties::default().with_delivery_mode(2);
        let confirm =
            publish_confirmed(&ch, "everywhere", format!("m{i}").as_bytes(), persistent).await;
        assert!(confirm.is_ack());
    }
    let reader = cluster.connect(other).await;
    let rch = reader.create_channel().await.unwrap();
    assert_eq!(message_count(&rch, "everywhere").await, 50);
    let mut consumer = rch
        .basic_consume(
            "everywhere".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..50 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("delivery")
            .unwrap()
            .unwrap();
        assert_eq!(d.data, format!("m{i}").as_bytes(), "in publish order");
    }

    let status = run_json(&[
        "cluster",
        "status",
        "--json",
        "--http",
        &format!("127.0.0.1:{}", cluster.nodes[follower].http_port),
    ]);
    assert_eq!(status["leader"], leader_id);
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        assert_eq!(m["zone"], format!("az-{}", m["id"]));
        assert_eq!(m["kind"], "voter");
    }
    assert!(status["zone_warning"].is_null());
    let table = std::process::Command::new(BIN)
        .args([
            "cluster",
            "status",
            "--http",
            &format!("127.0.0.1:{}", cluster.nodes[other].http_port),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(&format!("leader: {leader_id}")) && text.contains("az-2"),
        "{text}"
    );
}

/// A node that does not know the cluster secret cannot join: its connections are refused and
/// it never becomes a member or leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_secret_is_refused() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.leader().await;
    // An impostor claiming to be node 3, at node 3's raft port's neighbour, asks for votes and
    // sends entries with the wrong secret; the real members refuse it at the handshake.
    let tmp = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let mut peers = cluster.peer_args();
    peers.extend(["--peer".into(), format!("9=127.0.0.1:{port}@az-x")]);
    let mut impostor = std::process::Command::new(BIN)
        .env("RAFTMQ_WAL_PREWRITE_MIB", "0")
        .args([
            "serve",
            "--node-id",
            "9",
            "--az",
            "az-x",
            "--cluster-secret",
            "wrong",
        ])
        .args([
            "--amqp-listen",
            &format!("127.0.0.1:{}", crate::common::free_port()),
        ])
        .args([
            "--http-listen",
            &format!("127.0.0.1:{}", crate::common::free_port()),
        ])
        .args(["--raft-listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(tmp.path())
        .args(&peers)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the refusal to show in a member's log",
        || async { cluster.logs().contains("the cluster secret does not match") },
    )
    .await;
    unsafe { libc::kill(impostor.id() as i32, libc::SIGKILL) };
    let _ = impostor.wait();
    assert_eq!(
        cluster.leader().await,
        leader,
        "the impostor disturbed nobody"
    );
    let (_, body) = cluster.http(leader, "GET", "/cluster", None).unwrap();
    assert!(!body.contains("\"id\":9"), "{body}");
    // Admin changes need the secret too.
    let (status, _) = {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", cluster.nodes[0].http_port)).unwrap();
        s.write_all(b"DELETE /admin/faults HTTP/1.0\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        (out.split_whitespace().nth(1).unwrap().to_string(), out)
    };
    assert_eq!(status, "401");
    let _ = SECRET;
}

/// The leader is SIGKILLed under confirmed publishing from clients on all three nodes: a new
/// leader serves, clients of surviving nodes keep their channels, clients of the dead node
/// reconnect elsewhere; afterwards every confirmed message is there, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_load_loses_nothing_confirmed() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.leader().await;
    declare_durable(&cluster, leader, "kill-leader").await;
    let load = Load::new();
    let tasks = publishers(&load, &cluster, 3, "p", "kill-leader", 50);
    wait_confirms(&load, 300, Duration::from_secs(60), &cluster).await;
    let killed_at = Instant::now();
    cluster.kill(leader);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster
        .leader_among(&survivors, Duration::from_secs(30))
        .await;
    wait_confirms(&load, 300, Duration::from_secs(60), &cluster).await;
    let stall = killed_at.elapsed();
    // The survivors saw the process go (its connections ended, its port refused) and
    // campaigned at once rather than waiting for the leader's lease to run out.
    assert!(
        survivors
            .iter()
            .any(|&i| cluster.log(i).contains(LEADER_GONE)),
        "no survivor noticed that the leader's process was gone:\n{}",
        cluster.logs()
    );
    let verdict = stop_and_check(&load, tasks, &cluster.uri(new_leader), "kill-leader").await;
    // Publishers on the surviving nodes never lost their channel (no nack-everything-later).
    let ledger = load.merged();
    assert!(ledger.nacked.is_empty(), "nacks: {}", ledger.nacked.len());
    eprintln!(
        "leader kill: {verdict:?} (ok {}, next 300 confirms {stall:?} after the kill)",
        verdict.ok
    );
}

/// A follower dies and comes back: the others go on serving meanwhile, and it catches up —
/// here through a snapshot, since many entries were written (and purged) while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_catches_up_even_through_a_snapshot() {
    let mut cluster = Cluster::start(3, &["--snapshot-every", "50"]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    declare_durable(&cluster, leader, "catch-up").await;
    cluster.kill(follower);
    let load = Load::new();
    let live: Vec<String> = (0..3)
        .filter(|&i| i != follower)
        .map(|i| cluster.uri(i))
        .collect();
    let tasks = vec![tokio::spawn(checker::publisher(
        load.clone(),
        "p".into(),
        live,
        0,
        "catch-up".into(),
        20,
    ))];
    wait_confirms(&load, 1500, Duration::from_secs(90), &cluster).await;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    cluster.restart(follower);
    let leader_applied = || {
        cluster
            .health(leader)
            .and_then(|h| h["last_applied"].as_u64())
            .unwrap_or(0)
    };
    wait_until(
        Duration::from_secs(60),
        "the restarted follower to catch up",
        || async {
            cluster
                .health(follower)
                .and_then(|h| h["last_applied"].as_u64())
                .unwrap_or(0)
                + 5
                >= leader_applied()
        },
    )
    .await;
    assert!(
        cluster.log(follower).contains("installed snapshot"),
        "{}",
        cluster.log(follower)
    );
    let verdict = {
        let ledger = load.merged();
        let drained =
            checker::drain(&cluster.uri(follower), "catch-up", Duration::from_secs(3)).await;
        checker::check(&ledger, &drained)
    };
    assert!(
        verdict.lost.is_empty() && verdict.unexpected.is_empty() && verdict.duplicated == 0,
        "{verdict:?}"
    );
}

/// The leader is cut off from both followers: it stops reporting itself leader, its clients
/// get no confirms, the majority elects a new leader and serves; after healing, what the cut-off
/// side had queued is applied at most once and every confirmed message is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_steps_down_and_its_side_confirms_nothing() {
    let cluster = Cluster::start(3, &[]);
    let old = cluster.leader().await;
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    declare_durable(&cluster, old, "split").await;

    let minority = Load::new();
    let majority = Load::new();
    let m_task = tokio::spawn(checker::publisher(
        minority.clone(),
        "min".into(),
        vec![cluster.uri(old)],
        0,
        "split".into(),
        20,
    ));
    let maj_task = tokio::spawn(checker::publisher(
        majority.clone(),
        "maj".into(),
        vec![cluster.uri(others[0])],
        0,
        "split".into(),
        20,
    ));
    wait_confirms(&minority, 100, Duration::from_secs(60), &cluster).await;

    let other_ids: Vec<u64> = others.iter().map(|&i| cluster.nodes[i].id).collect();
    cluster.partition(old, &other_ids);
    let new = cluster.leader_among(&others, Duration::from_secs(30)).await;
    wait_until(
        Duration::from_secs(10),
        "the cut-off leader to step down",
        || async { cluster.role(old).as_deref() != Some("leader") },
    )
    .await;
    // From a moment after the cut, the minority side confirms nothing...
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = minority.confirmed();
    wait_confirms(&majority, 200, Duration::from_secs(60), &cluster).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        minority.confirmed(),
        before,
        "the cut-off side confirmed publishes"
    );
    // ...and after healing, everything is consistent.
    cluster.heal(old);
    wait_confirms(&majority, 100, Duration::from_secs(60), &cluster).await;
    for load in [&minority, &majority] {
        load.stop.store(true, Ordering::Relaxed);
    }
    m_task.await.unwrap();
    maj_task.await.unwrap();
    let mut ledger = minority.merged();
    let m = majority.merged();
    ledger.attempted.extend(m.attempted);
    ledger.confirmed.extend(m.confirmed);
    let drained = checker::drain(&cluster.uri(new), "split", Duration::from_secs(3)).await;
    let verdict = checker::check(&ledger, &drained);
    assert!(verdict.lost.is_empty(), "lost: {:?}", verdict.lost);
    assert!(
        verdict.unexpected.is_empty(),
        "unexpected: {:?}",
        verdict.unexpected
    );
    assert_eq!(verdict.duplicated, 0, "applied twice");
    // A cut-off leader is alive: nobody takes it for a dead process.
    for i in 0..3 {
        assert!(!cluster.log(i).contains(LEADER_GONE), "{}", cluster.log(i));
    }
}

/// A one-way cut: the leader still hears the others but can send them nothing (no heartbeats,
/// no appends). They elect a new leader, whose vote request the old one hears, so it steps
/// down; clients on the other nodes carry on; after healing nothing confirmed is missing and
/// nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_can_hear_but_not_speak_is_replaced_and_nothing_is_lost() {
    let cluster = Cluster::start(3, &[]);
    let old = cluster.leader().await;
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    declare_durable(&cluster, old, "oneway").await;
    let load = Load::new();
    let tasks = publishers(&load, &cluster, 3, "p", "oneway", 20);
    wait_confirms(&load, 300, Duration::from_secs(60), &cluster).await;

    let other_ids: Vec<u64> = others.iter().map(|&i| cluster.nodes[i].id).collect();
    cluster.cut(old, &other_ids, "outgoing");
    let new = cluster.leader_among(&others, Duration::from_secs(30)).await;
    wait_confirms(&load, 300, Duration::from_secs(60), &cluster).await;
    cluster.heal(old);
    wait_confirms(&load, 200, Duration::from_secs(60), &cluster).await;
    stop_and_check(&load, tasks, &cluster.uri(new), "oneway").await;
}

/// Consumers on a node that dies: their unacknowledged messages go to a consumer on another
/// node, flagged redelivered, once the leader declares the node lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_of_a_dead_nodes_consumer_go_to_other_consumers() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.leader().await;
    let doomed = (leader + 1) % 3;
    let survivor = (leader + 2) % 3;
    declare_durable(&cluster, leader, "held").await;
    let (_pconn, pch) = confirming_channel(&cluster, leader).await;
    for i in 0..10 {
        let persistent = BasicProperties::default().with_delivery_mode(2);
        publish_confirmed(&pch, "held", format!("h{i}").as_bytes(), persistent).await;
    }
    let dconn = cluster.connect(doomed).await;
    let dch = dconn.create_channel().await.unwrap();
    let mut held = dch
        .basic_consume(
            "held".into(),
            "holder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::timeout(Duration::from_secs(10), held.next())
            .await
            .expect("delivery")
            .unwrap()
            .unwrap();
    }
    let sconn = cluster.connect(survivor).await;
    let sch = sconn.create_channel().await.unwrap();
    let mut other = sch
        .basic_consume(
            "held".into(),
            "other".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    cluster.kill(doomed);
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 10 {
        let d = tokio::time::timeout(Duration::from_secs(30), other.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "redeliveries after the node's death; got {got:?}\n{}",
                    cluster.logs()
                )
            })
            .unwrap()
            .unwrap();
        assert!(d.redelivered, "a redelivery carries the redelivered flag");
        got.insert(String::from_utf8_lossy(&d.data).to_string());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(got.len(), 10);
    // The leader declared the node lost because its process was found gone, without waiting
    // for it to be silent long enough.
    assert!(
        cluster.log(leader).contains("process_gone=true"),
        "{}",
        cluster.log(leader)
    );
}

/// A whole zone (one node of three) is lost under load, then every node is restarted one at a
/// time (a rolling restart) while publishing goes on: nothing confirmed is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_loss_then_rolling_restart_under_load_loses_nothing() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.leader().await;
    declare_durable(&cluster, leader, "rolling").await;
    let load = Load::new();
    let tasks = publishers(&load, &cluster, 2, "r", "rolling", 20);
    wait_confirms(&load, 200, Duration::from_secs(60), &cluster).await;
    // Zone az-3 goes away and comes back.
    cluster.kill(2);
    wait_confirms(&load, 200, Duration::from_secs(60), &cluster).await;
    cluster.restart(2);
    // Rolling restart: each node in turn, waiting for it to serve before the next.
    for i in 0..3 {
        cluster.kill(i);
        wait_confirms(&load, 100, Duration::from_secs(60), &cluster).await;
        cluster.restart(i);
        wait_confirms(&load, 100, Duration::from_secs(60), &cluster).await;
    }
    let leader = cluster.leader().await;
    let verdict = stop_and_check(&load, tasks, &cluster.uri(leader), "rolling").await;
    eprintln!("rolling restart: {verdict:?}");
}

/// Membership at run time: a fourth node started with --join is added (it catches up and
/// votes), then removed; the cluster serves throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_added_and_removed_at_run_time() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.leader().await;
    declare_durable(&cluster, leader, "members").await;
    let tmp = tempfile::tempdir().unwrap();
    let raft_port = crate::common::free_port();
    let amqp_port = crate::common::free_port();
    let log = std::fs::File::create(tmp.path().join("node4.log")).unwrap();
    let mut fourth = std::process::Command::new(BIN)
        .env("RAFTMQ_WAL_PREWRITE_MIB", "0")
        .args([
            "serve",
            "--node-id",
            "4",
            "--az",
            "az-4",
            "--join",
            "--cluster-secret",
            SECRET,
        ])
        .args(["--amqp-listen", &format!("127.0.0.1:{amqp_port}")])
        .args([
            "--http-listen",
            &format!("127.0.0.1:{}", crate::common::free_port()),
        ])
        .args(["--raft-listen", &format!("127.0.0.1:{raft_port}")])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let follower_http = format!("127.0.0.1:{}", cluster.nodes[(leader + 1) % 3].http_port);
    let out = std::process::Command::new(BIN)
        .args([
            "cluster",
            "add",
            "--http",
            &follower_http,
            "--cluster-secret",
            SECRET,
            "--id",
            "4",
        ])
        .args([
            "--raft-addr",
            &format!("127.0.0.1:{raft_port}"),
            "--amqp-addr",
            &format!("127.0.0.1:{amqp_port}"),
            "--az",
            "az-4",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cluster add: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    wait_until(
        Duration::from_secs(60),
        "the new node to serve AMQP",
        || async { std::net::TcpStream::connect(("127.0.0.1", amqp_port)).is_ok() },
    )
    .await;
    let conn = lapin::Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2f"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(
        message_count(&ch, "members").await,
        0,
        "the new node sees the replicated queue"
    );
    let (_, body) = cluster.http(leader, "GET", "/cluster", None).unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 4, "{body}");
    conn.close(200, "bye".into()).await.unwrap();

    run_ok(&[
        "cluster",
        "remove",
        "--http",
        &follower_http,
        "--cluster-secret",
        SECRET,
        "--id",
        "4",
    ]);
    let (_, body) = cluster.http(leader, "GET", "/cluster", None).unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{body}");
    unsafe { libc::kill(fourth.id() as i32, libc::SIGKILL) };
    let _ = fourth.wait();
    // The three go on serving.
    declare_durable(&cluster, leader, "after-remove").await;
}

/// The leader is frozen (SIGSTOP) under load for longer than the node-down timeout, then
/// resumed: the others elect a leader and declare the frozen node lost; when it resumes it
/// follows, ends its old life (its clients reconnect) and nothing is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_resumes_as_a_follower_and_nothing_is_lost() {
    let cluster = Cluster::start(3, &[]);
    let frozen = cluster.leader().await;
    let others: Vec<usize> = (0..3).filter(|&i| i != frozen).collect();
    declare_durable(&cluster, frozen, "frozen").await;
    let load = Load::new();
    let tasks = publishers(&load, &cluster, 3, "f", "frozen", 20);
    wait_confirms(&load, 200, Duration::from_secs(60), &cluster).await;
    cluster.freeze(frozen);
    let new = cluster.leader_among(&others, Duration::from_secs(30)).await;
    wait_confirms(&load, 200, Duration::from_secs(60), &cluster).await;
    // Past the node-down timeout (3 s in these tests), the frozen node's life is ended.
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.thaw(frozen);
    wait_until(
        Duration::from_secs(30),
        "the resumed node to follow the new leader",
        || async {
            cluster
                .health(frozen)
                .is_some_and(|h| h["role"] == "follower" && h["leader"] == cluster.nodes[new].id)
        },
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "the resumed node to start a new life",
        || async { cluster.log(frozen).contains("starting a new life") },
    )
    .await;
    wait_confirms(&load, 200, Duration::from_secs(60), &cluster).await;
    stop_and_check(&load, tasks, &cluster.uri(new), "frozen").await;
}

/// Five nodes; two of them (a whole zone's worth) are SIGKILLed under load, the leader among
/// them: the remaining three elect a leader and go on; nothing confirmed is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_five_lost_at_once_the_other_three_carry_on() {
    let mut cluster = Cluster::start(5, &[]);
    let leader = cluster.leader().await;
    declare_durable(&cluster, leader, "five").await;
    let load = Load::new();
    let tasks = publishers(&load, &cluster, 3, "v", "five", 20);
    wait_confirms(&load, 200, Duration::from_secs(60), &cluster).await;
    let second = (leader + 1) % 5;
    cluster.kill(leader);
    cluster.kill(second);
    let survivors: Vec<usize> = (0..5).filter(|&i| i != leader && i != second).collect();
    let new = cluster
        .leader_among(&survivors, Duration::from_secs(30))
        .await;
    wait_confirms(&load, 300, Duration::from_secs(60), &cluster).await;
    stop_and_check(&load, tasks, &cluster.uri(new), "five").await;
}

/// `--inter-az-delay-ms` imitates zone latency: a confirmed publish through a follower crosses
/// zones at least four times (forward, replicate, and their answers), so it cannot take less
/// than four delays. The cluster still elects and serves with such latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inter_zone_delay_slows_cross_zone_traffic() {
    let cluster = Cluster::start(3, &["--inter-az-delay-ms", "60"]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    declare_durable(&cluster, follower, "slow").await;
    let (_conn, ch) = confirming_channel(&cluster, follower).await;
    let started = Instant::now();
    let confirm = publish_confirmed(&ch, "slow", b"x", BasicProperties::default()).await;
    assert!(confirm.is_ack());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(240),
        "a cross-zone confirm took only {took:?}"
    );
}
