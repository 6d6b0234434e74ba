//! The group-commit batcher between the broker's proposal channel and openraft.
//!
//! It waits for the first command (or the tick), then takes everything already queued, up to
//! the batch limits, into ONE log entry stamped with the wall clock, and hands it to openraft
//! with `client_write_ff` (fire and forget keeps entries in proposal order). Up to
//! `max_entries_in_flight` entries are outstanding at once: while one entry's fsync runs, the
//! next batch fills up. With nothing to propose for a tick, it proposes an empty entry so the
//! machine's clock moves (TTL expiry). When an entry cannot be written, every connection that
//! had a command in it is told to close: a client must never wait forever, nor get a confirm
//! for a publish that was not written.
//!
//! Nothing here decides anything about the broker's state; it only orders and batches.

use crate::types::{Raft, TypeConfig};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use openraft::error::{ClientWriteError, Fatal};
use openraft::raft::ClientWriteResponse;
use raftmq_broker::ids::{ConnId, NodeId};
use raftmq_broker::log::{EffectSink, ProposalReceiver};
use raftmq_broker::machine::command::{Command, Entry};
use raftmq_broker::machine::effect::Effect;
use raftmq_broker::reply_code::{self, CONNECTION_FORCED, INTERNAL_ERROR};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

/// Limits of one batch and of the pipeline.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchLimits {
    pub max_commands_per_entry: usize,
    pub max_bytes_per_entry: usize,
    pub max_entries_in_flight: usize,
    pub tick_interval: Duration,
}

/// The proposer's wall clock in milliseconds since the Unix epoch. A clock before 1970 reads as
/// 0; the machine keeps its own clock monotonic with `max`, so that only delays expiry.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type WriteResult =
    Result<ClientWriteResponse<TypeConfig>, ClientWriteError<NodeId, crate::types::NodeInfo>>;

/// The outcome of one proposed entry.
struct Written {
    conns: BTreeSet<ConnId>,
    result: Result<WriteResult, tokio::sync::oneshot::error::RecvError>,
}

pub(crate) struct Batcher {
    pub(crate) raft: Raft,
    pub(crate) sink: Arc<dyn EffectSink>,
    pub(crate) limits: BatchLimits,
    /// Turns true when the node shuts down: stop taking new commands, write what is queued.
    pub(crate) stop: watch::Receiver<bool>,
    /// Dropped when the batcher is done; the node's shutdown waits for that.
    pub(crate) _done: mpsc::Sender<()>,
}

impl Batcher {
    pub(crate) async fn run(mut self, mut proposals: ProposalReceiver) {
        let limits = self.limits;
        let mut in_flight: FuturesOrdered<BoxFuture<'static, Written>> = FuturesOrdered::new();
        // A command taken from the channel that did not fit in the previous batch.
        let mut held: Option<Command> = None;
        let mut closed = false;
        let mut stopping = *self.stop.borrow();
        if stopping {
            proposals.close();
        }
        let mut ticker = tokio::time::interval(limits.tick_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_proposed = Instant::now();

        loop {
            if closed && held.is_none() {
                break;
            }
            // Back-pressure: with the window full, wait for the oldest entry before taking more;
            // meanwhile commands pile up in the channel and make the next batch bigger.
            if in_flight.len() >= limits.max_entries_in_flight {
                if let Some(written) = in_flight.next().await {
                    self.finish(written);
                }
                continue;
            }
            let first = match held.take() {
                Some(command) => Some(command),
                None => {
                    tokio::select! {
                        biased;
                        Some(written) = in_flight.next(), if !in_flight.is_empty() => {
                            self.finish(written);
                            continue;
                        }
                        _ = self.stop.changed(), if !stopping => {
                            // Also taken when the node was dropped without shutdown (sender gone).
                            stopping = true;
                            // Refuse new commands; the ones already queued are still received.
                            proposals.close();
                            continue;
                        }
                        command = proposals.recv() => match command {
                            Some(command) => Some(command),
                            None => {
                                closed = true;
                                continue;
                            }
                        },
                        _ = ticker.tick() => {
                            if stopping || last_proposed.elapsed() < limits.tick_interval {
                                continue;
                            }
                            None
                        }
                    }
                }
            };

            let mut commands = Vec::new();
            if let Some(first) = first {
                let mut bytes = first.approx_size();
                commands.push(first);
                while commands.len() < limits.max_commands_per_entry
                    && bytes < limits.max_bytes_per_entry
                {
                    match proposals.try_recv() {
                        Ok(command) => {
                            let size = command.approx_size();
                            if bytes + size > limits.max_bytes_per_entry {
                                held = Some(command);
                                break;
                            }
                            bytes += size;
                            commands.push(command);
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            self.propose(commands, &mut in_flight).await;
            last_proposed = Instant::now();
        }

        while let Some(written) = in_flight.next().await {
            self.finish(written);
        }
        tracing::debug!("proposer stopped");
    }

    async fn propose(
        &self,
        commands: Vec<Command>,
        in_flight: &mut FuturesOrdered<BoxFuture<'static, Written>>,
    ) {
        let conns: BTreeSet<ConnId> = commands.iter().filter_map(Command::conn).collect();
        let count = commands.len();
        let entry = Entry {
            now_ms: now_ms(),
            commands,
        };
        match self.raft.client_write_ff(entry).await {
            Ok(responder) => {
                tracing::trace!(commands = count, "proposed entry");
                in_flight.push_back(Box::pin(async move {
                    Written {
                        conns,
                        result: responder.await,
                    }
                }));
            }
            Err(fatal) => {
                let (code, text) = self.fatal_reply(&fatal);
                tracing::warn!(error = %fatal, commands = count, "cannot propose: raft is stopped");
                self.fail(&conns, code, &text);
            }
        }
    }

    fn finish(&self, written: Written) {
        let (code, text) = match written.result {
            Ok(Ok(_)) => return,
            Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                // The entry may still be committed by the new leader; the connection is closed
                // either way, so no confirm for it goes out from here. Leader forwarding (a later
                // issue) will make this rare.
                let leader = f
                    .leader_id
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "unknown".into());
                (
                    CONNECTION_FORCED,
                    reply_code::text(
                        CONNECTION_FORCED,
                        format!("this node is no longer the leader (leader: {leader})"),
                    ),
                )
            }
            Ok(Err(ClientWriteError::ChangeMembershipError(e))) => (
                INTERNAL_ERROR,
                reply_code::text(INTERNAL_ERROR, format!("log write failed: {e}")),
            ),
            // The responder was dropped: raft stopped, either on shutdown or on a fatal error.
            Err(_) => {
                let fatal = self
                    .raft
                    .metrics()
                    .borrow()
                    .running_state
                    .clone()
                    .err()
                    .unwrap_or(Fatal::Stopped);
                self.fatal_reply(&fatal)
            }
        };
        tracing::warn!(reply_code = code, reply_text = %text, connections = written.conns.len(), "log entry not written");
        self.fail(&written.conns, code, &text);
    }

    fn fatal_reply(&self, fatal: &Fatal<NodeId>) -> (u16, String) {
        match fatal {
            Fatal::Stopped => (
                CONNECTION_FORCED,
                reply_code::text(
                    CONNECTION_FORCED,
                    "broker forced connection closure with reason 'shutdown'",
                ),
            ),
            other => (
                INTERNAL_ERROR,
                reply_code::text(INTERNAL_ERROR, format!("log write failed: {other}")),
            ),
        }
    }

    fn fail(&self, conns: &BTreeSet<ConnId>, reply_code: u16, reply_text: &str) {
        if conns.is_empty() {
            return;
        }
        let effects = conns
            .iter()
            .map(|conn| Effect::ConnectionError {
                conn: *conn,
                reply_code,
                reply_text: reply_text.to_string(),
                class_id: 0,
                method_id: 0,
            })
            .collect();
        self.sink.dispatch(effects);
    }
}
