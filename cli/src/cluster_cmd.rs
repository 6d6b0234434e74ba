//! `raftmq cluster status|add|remove|partition|heal`: admin calls to a running node's HTTP
//! endpoint, printed for people (or as JSON).

use crate::args::{ClusterCommand, PartitionDirection};
use crate::http::{self, AddMember, Partition};
use anyhow::{Context, Result};
use raftmq_raft::{ClusterStatus, Direction};

pub fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status(a) => {
            let body = http::call(a.node.http, "GET", "/cluster", None, None)?;
            if a.json {
                println!("{body}");
                return Ok(());
            }
            let status: ClusterStatus =
                serde_json::from_str(&body).context("the node answered something unexpected")?;
            print_status(&status);
            Ok(())
        }
        ClusterCommand::Add(a) => {
            let body = serde_json::to_string(&AddMember {
                node_id: a.node_id,
                raft_addr: a.raft_addr,
                amqp_addr: a.amqp_addr,
                zone: a.az,
            })?;
            let secret = a.node.cluster_secret.as_deref();
            println!(
                "{}",
                http::call(a.node.http, "POST", "/cluster/members", Some(body), secret)?
            );
            Ok(())
        }
        ClusterCommand::Remove(a) => {
            let path = format!("/cluster/members/{}", a.node_id);
            let secret = a.node.cluster_secret.as_deref();
            println!(
                "{}",
                http::call(a.node.http, "DELETE", &path, None, secret)?
            );
            Ok(())
        }
        ClusterCommand::Partition(a) => {
            let direction = match a.direction {
                PartitionDirection::Both => Direction::Both,
                PartitionDirection::Outgoing => Direction::Outgoing,
                PartitionDirection::Incoming => Direction::Incoming,
            };
            let body = serde_json::to_string(&Partition {
                peers: a.peers,
                direction,
            })?;
            let secret = a.node.cluster_secret.as_deref();
            println!(
                "{}",
                http::call(a.node.http, "POST", "/admin/faults", Some(body), secret)?
            );
            Ok(())
        }
        ClusterCommand::Heal(a) => {
            let secret = a.cluster_secret.as_deref();
            println!(
                "{}",
                http::call(a.http, "DELETE", "/admin/faults", None, secret)?
            );
            Ok(())
        }
    }
}

fn print_status(s: &ClusterStatus) {
    let leader = s
        .leader
        .map(|l| l.to_string())
        .unwrap_or_else(|| "none".into());
    println!(
        "leader: {leader}   term: {}   reported by node {}   last log index: {}   applied: {}",
        s.term,
        s.reported_by,
        opt(s.last_log_index),
        opt(s.last_applied)
    );
    println!(
        "{:<4} {:<8} {:<8} {:<22} {:<22} {:<8} {:>10} {:>8} {:>12}",
        "id", "zone", "kind", "raft", "amqp", "role", "matched", "lag", "contact_ms"
    );
    for m in &s.members {
        let role = if m.is_leader { "leader" } else { "follower" };
        println!(
            "{:<4} {:<8} {:<8} {:<22} {:<22} {:<8} {:>10} {:>8} {:>12}",
            m.id,
            m.zone,
            m.kind,
            m.raft_addr,
            m.amqp_addr,
            role,
            opt(m.matched_index),
            opt(m.lag),
            opt(m.last_contact_ms)
        );
    }
    if let Some(w) = &s.zone_warning {
        println!("warning: {w}");
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}
