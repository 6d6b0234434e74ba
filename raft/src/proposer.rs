//! The group-commit batcher between the broker's proposal channel and the log, on every node.
//!
//! It waits for the first command, takes everything already queued (up to the batch limits)
//! into ONE entry stamped with the wall clock and with its origin (this node, this life, the
//! next sequence number), and hands it to the leader: to openraft directly on the leader, over
//! the transport on a follower ([`Router`]). Up to `max_entries_in_flight` batches are
//! outstanding; while one is written, the next fills up.
//!
//! A batch is done when this node has APPLIED it (its sequence number shows in the replicated
//! state), not when someone said it was committed. When the outcome of a batch is uncertain (the
//! leader changed, a forward broke or timed out, or a batch was committed but skipped because an
//! earlier one was missing), every outstanding batch is proposed again, in order, to whoever leads
//! now; the state machine applies each (node, life, seq) once and in sequence, so nothing is lost,
//! nothing applies twice, and a client's channel survives a leader change.
//!
//! The leader alone proposes empty entries when idle, so the machine's clock moves (TTL).
//! Nothing here decides anything about the broker's state; it only orders, batches and retries.

use crate::transport::wire::{Request, Response};
use crate::transport::{PeerClient, Transport};
use crate::types::{NodeInfo, Raft, RaftMetrics};
use crate::LogStatus;
use futures::future::{ready, BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::Fatal;
use openraft::ServerState;
use raftmq_broker::ids::{ConnId, NodeId};
use raftmq_broker::log::{EffectSink, ProposalReceiver};
use raftmq_broker::machine::command::{Command, Entry, Origin};
use raftmq_broker::machine::effect::Effect;
use raftmq_broker::reply_code::{self, CONNECTION_FORCED, INTERNAL_ERROR};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

/// Limits of one batch and of the pipeline.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchLimits {
    pub max_commands_per_entry: usize,
    pub max_bytes_per_entry: usize,
    pub max_entries_in_flight: usize,
    pub tick_interval: Duration,
}

/// How long a forwarded batch may go unanswered before it is proposed again.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before proposing again after a failure (no leader yet, a refused forward).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The proposer's wall clock in milliseconds since the Unix epoch. A clock before 1970 reads as
/// 0; the machine keeps its own clock monotonic with `max`, so that only delays expiry.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The last applied index and the known leader: all the batcher needs from the metrics.
fn applied_and_leader(m: &RaftMetrics) -> (u64, Option<NodeId>) {
    (
        m.last_applied.map(|l| l.index).unwrap_or(0),
        m.current_leader,
    )
}

/// Why a batch did not reach the log.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No leader is known yet (an election is going on).
    NoLeader,
    /// The leader refused or the way to it broke: propose again.
    Retry(String),
    /// Raft has stopped on this node.
    Fatal(Fatal<NodeId>),
}

/// Hands entries to the current leader.
pub(crate) struct Router {
    raft: Raft,
    node_id: NodeId,
    transport: Arc<Transport>,
    forward: Option<PeerClient>,
}

impl Router {
    pub(crate) fn new(raft: Raft, node_id: NodeId, transport: Arc<Transport>) -> Router {
        Router {
            raft,
            node_id,
            transport,
            forward: None,
        }
    }

    /// Hands `entry` on, in call order, and returns its outcome: the index it was committed at.
    pub(crate) async fn submit(
        &mut self,
        entry: Arc<Entry>,
    ) -> BoxFuture<'static, Result<u64, SendError>> {
        let (state, leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let leader = m.current_leader.and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .cloned()
                    .map(|info| (l, info))
            });
            if let Err(fatal) = &m.running_state {
                return ready(Err(SendError::Fatal(fatal.clone()))).boxed();
            }
            (m.state, leader)
        };
        if state == ServerState::Shutdown {
            return ready(Err(SendError::Fatal(Fatal::Stopped))).boxed();
        }
        if state == ServerState::Leader {
            return match self.raft.client_write_ff(entry).await {
                Ok(responder) => async move {
                    match responder.await {
                        Ok(Ok(written)) => Ok(written.log_id.index),
                        Ok(Err(e)) => Err(SendError::Retry(e.to_string())),
                        Err(_) => Err(SendError::Retry("raft dropped the write".into())),
                    }
                }
                .boxed(),
                Err(fatal) => ready(Err(SendError::Fatal(fatal))).boxed(),
            };
        }
        let Some((leader, info)) = leader.filter(|(l, _)| *l != self.node_id) else {
            return ready(Err(SendError::NoLeader)).boxed();
        };
        self.forward_to(leader, &info, entry).await
    }

    async fn forward_to(
        &mut self,
        leader: NodeId,
        info: &NodeInfo,
        entry: Arc<Entry>,
    ) -> BoxFuture<'static, Result<u64, SendError>> {
        if self.forward.as_ref().map(PeerClient::target) != Some(leader) {
            self.forward = Some(PeerClient::new(self.transport.clone(), leader, info));
        }
        let client = self.forward.as_mut().expect("set above");
        match client.start(Request::Forward(entry)).await {
            Ok(rx) => async move {
                match tokio::time::timeout(FORWARD_TIMEOUT, rx).await {
                    Ok(Ok(Response::Forward(Ok(index)))) => Ok(index),
                    Ok(Ok(Response::Forward(Err(e)))) => Err(SendError::Retry(e.to_string())),
                    Ok(Ok(_)) => Err(SendError::Retry("wrong response kind".into())),
                    Ok(Err(_)) => Err(SendError::Retry(format!(
                        "connection to leader {leader} broke"
                    ))),
                    Err(_) => Err(SendError::Retry(format!(
                        "leader {leader} did not answer in time"
                    ))),
                }
            }
            .boxed(),
            Err(e) => {
                self.forward = None;
                ready(Err(SendError::Retry(e.to_string()))).boxed()
            }
        }
    }
}

/// Requests to the batcher from the node.
pub(crate) enum Control {
    /// Start a life: announce `NodeStarted` and wait until it is applied; batches proposed
    /// afterwards carry this epoch.
    NewLife {
        epoch: u64,
        drop_transient: bool,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// A batch proposed and not yet seen applied.
struct Pending {
    seq: u64,
    entry: Arc<Entry>,
    conns: BTreeSet<ConnId>,
    /// The index the leader said it was committed at, in the current round of sends.
    committed_at: Option<u64>,
}

struct Life {
    epoch: u64,
    next_seq: u64,
}

type Outcome = (u64, u64, Result<u64, SendError>);

pub(crate) struct Batcher {
    pub(crate) node_id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) status: LogStatus,
    pub(crate) router: Router,
    pub(crate) sink: Arc<dyn EffectSink>,
    pub(crate) limits: BatchLimits,
    pub(crate) control: mpsc::Receiver<Control>,
    /// Bumped each time this node finds its life ended by the cluster (declared lost).
    pub(crate) life_lost: watch::Sender<u64>,
    /// Turns true when the node shuts down: stop taking new commands, write what is queued.
    pub(crate) stop: watch::Receiver<bool>,
    /// Dropped when the batcher is done; the node's shutdown waits for that.
    pub(crate) _done: mpsc::Sender<()>,
}

struct Run {
    life: Option<Life>,
    pending: VecDeque<Pending>,
    /// Sends of earlier rounds are ignored when they answer.
    round: u64,
    resend_at: Option<Instant>,
    in_flight: FuturesUnordered<BoxFuture<'static, Outcome>>,
    last_leader: Option<NodeId>,
}

impl Batcher {
    pub(crate) async fn run(mut self, mut proposals: ProposalReceiver) {
        let limits = self.limits;
        let mut metrics = self.raft.metrics();
        let mut run = Run {
            life: None,
            pending: VecDeque::new(),
            round: 0,
            resend_at: None,
            in_flight: FuturesUnordered::new(),
            last_leader: None,
        };
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
        let mut metrics_open = true;

        loop {
            if closed && held.is_none() && run.pending.is_empty() {
                break;
            }
            let can_take = run.life.is_some()
                && run.pending.len() < limits.max_entries_in_flight
                && run.resend_at.is_none()
                && !closed;
            let resend_at = run.resend_at.unwrap_or_else(Instant::now);
            let first = tokio::select! {
                biased;
                Some(control) = self.control.recv() => {
                    match control {
                        Control::NewLife { epoch, drop_transient, done } => {
                            let result = self.new_life(&mut run, epoch, drop_transient).await;
                            let _ = done.send(result);
                        }
                    }
                    continue;
                }
                Some((round, seq, outcome)) = run.in_flight.next(), if !run.in_flight.is_empty() => {
                    self.outcome(&mut run, round, seq, outcome);
                    continue;
                }
                changed = metrics.changed(), if metrics_open => {
                    if changed.is_err() {
                        // Raft is gone: what is outstanding or comes later cannot be written;
                        // sending it fails at once and tells its connections.
                        metrics_open = false;
                        self.fail_all(&mut run, &Fatal::Stopped);
                        continue;
                    }
                    let (applied, leader) = applied_and_leader(&metrics.borrow_and_update());
                    self.progress(&mut run, applied, leader);
                    continue;
                }
                _ = tokio::time::sleep_until(resend_at), if run.resend_at.is_some() => {
                    self.resend(&mut run).await;
                    continue;
                }
                _ = self.stop.changed(), if !stopping => {
                    // Also taken when the node was dropped without shutdown (sender gone).
                    stopping = true;
                    // Refuse new commands; the ones already queued are still received.
                    proposals.close();
                    continue;
                }
                command = async {
                    match held.take() {
                        Some(command) => Some(command),
                        None => proposals.recv().await,
                    }
                }, if can_take => match command {
                    Some(command) => command,
                    None => {
                        closed = true;
                        continue;
                    }
                },
                _ = ticker.tick() => {
                    if !stopping && last_proposed.elapsed() >= limits.tick_interval {
                        self.tick().await;
                        last_proposed = Instant::now();
                    }
                    continue;
                }
            };

            let mut commands = Vec::new();
            let mut bytes = first.approx_size();
            commands.push(first);
            while commands.len() < limits.max_commands_per_entry
                && bytes < limits.max_bytes_per_entry
            {
                match proposals.try_recv() {
                    Some(command) => {
                        let size = command.approx_size();
                        if bytes + size > limits.max_bytes_per_entry {
                            held = Some(command);
                            break;
                        }
                        bytes += size;
                        commands.push(command);
                    }
                    None => break,
                }
            }
            self.propose(&mut run, commands).await;
            last_proposed = Instant::now();
        }
        tracing::debug!("proposer stopped");
    }

    /// Proposes a new batch of this life.
    async fn propose(&mut self, run: &mut Run, commands: Vec<Command>) {
        let life = run
            .life
            .as_mut()
            .expect("batches are taken only during a life");
        let seq = life.next_seq;
        life.next_seq += 1;
        let conns: BTreeSet<ConnId> = commands.iter().filter_map(Command::conn).collect();
        let entry = Arc::new(Entry {
            now_ms: now_ms(),
            commands,
            origin: Some(Origin {
                node: self.node_id,
                epoch: life.epoch,
                seq,
            }),
        });
        tracing::trace!(seq, commands = entry.commands.len(), "proposing batch");
        run.pending.push_back(Pending {
            seq,
            entry: entry.clone(),
            conns,
            committed_at: None,
        });
        let outcome = self.router.submit(entry).await;
        let round = run.round;
        run.in_flight
            .push(async move { (round, seq, outcome.await) }.boxed());
    }

    /// Proposes every outstanding batch again, in order, to whoever leads now.
    async fn resend(&mut self, run: &mut Run) {
        run.resend_at = None;
        run.round += 1;
        let round = run.round;
        tracing::debug!(
            batches = run.pending.len(),
            round,
            "proposing outstanding batches again"
        );
        for p in run.pending.iter_mut() {
            p.committed_at = None;
            let seq = p.seq;
            let outcome = self.router.submit(p.entry.clone()).await;
            run.in_flight
                .push(async move { (round, seq, outcome.await) }.boxed());
        }
    }

    fn outcome(&mut self, run: &mut Run, round: u64, seq: u64, outcome: Result<u64, SendError>) {
        if round != run.round {
            return;
        }
        match outcome {
            Ok(index) => {
                if let Some(p) = run.pending.iter_mut().find(|p| p.seq == seq) {
                    p.committed_at = Some(index);
                }
                let (applied, leader) = applied_and_leader(&self.raft.metrics().borrow());
                self.progress(run, applied, leader);
            }
            Err(SendError::Fatal(fatal)) => self.fail_all(run, &fatal),
            Err(e) => {
                let why = match &e {
                    SendError::Retry(why) => why.as_str(),
                    _ => "no leader is known",
                };
                tracing::debug!(seq, why, "batch not taken; will propose again");
                if run.resend_at.is_none() && !run.pending.is_empty() {
                    run.resend_at = Some(Instant::now() + RETRY_PAUSE);
                }
            }
        }
    }

    /// Looks at what this node has applied: batches that took effect are done; a batch that was
    /// committed but did not take effect, or a new leader, means proposing again; a life that
    /// the cluster ended means starting over.
    fn progress(&mut self, run: &mut Run, applied: u64, leader: Option<NodeId>) {
        if let Some(life) = &run.life {
            let seen = self.status.read_state(|s| s.node_life(self.node_id));
            match seen {
                Some(l) if l.epoch == life.epoch && !l.lost => {
                    while run.pending.front().is_some_and(|p| p.seq <= l.last_seq) {
                        run.pending.pop_front();
                    }
                }
                Some(l) => {
                    // Declared lost, or a newer life of this node id was announced elsewhere.
                    tracing::warn!(
                        epoch = life.epoch,
                        lost = l.lost,
                        "the cluster ended this node's life; its clients are disconnected"
                    );
                    let text = reply_code::text(
                        CONNECTION_FORCED,
                        "this node lost contact with the cluster; reconnect",
                    );
                    self.fail_pending(run, CONNECTION_FORCED, &text);
                    run.life = None;
                    self.life_lost.send_modify(|n| *n += 1);
                    return;
                }
                None => {}
            }
        }
        if run
            .pending
            .front()
            .and_then(|p| p.committed_at)
            .is_some_and(|index| index <= applied)
            && run.resend_at.is_none()
        {
            // Committed, applied, and still not taken: an earlier batch was missing then.
            run.resend_at = Some(Instant::now());
        }
        if leader != run.last_leader {
            run.last_leader = leader;
            if !run.pending.is_empty() && leader.is_some() {
                run.resend_at = Some(Instant::now());
            }
        }
    }

    /// Ends the current life (if any) and announces `epoch`, retrying until it is applied.
    async fn new_life(
        &mut self,
        run: &mut Run,
        epoch: u64,
        drop_transient: bool,
    ) -> Result<(), String> {
        let text = reply_code::text(CONNECTION_FORCED, "this node started a new life; reconnect");
        self.fail_pending(run, CONNECTION_FORCED, &text);
        run.round += 1;
        run.resend_at = None;
        run.life = None;
        loop {
            if *self.stop.borrow() {
                return Err("the node is shutting down".into());
            }
            let entry = Arc::new(Entry {
                now_ms: now_ms(),
                commands: vec![Command::NodeStarted {
                    node: self.node_id,
                    epoch,
                    drop_transient,
                }],
                origin: None,
            });
            match self.router.submit(entry).await.await {
                Ok(index) => {
                    let waited = self
                        .raft
                        .wait(Some(Duration::from_secs(30)))
                        .applied_index_at_least(Some(index), "node start applied")
                        .await;
                    let started = self
                        .status
                        .read_state(|s| s.node_life(self.node_id))
                        .is_some_and(|l| l.epoch == epoch && !l.lost);
                    if waited.is_ok() && started {
                        tracing::info!(epoch, drop_transient, index, "node life started");
                        run.life = Some(Life { epoch, next_seq: 1 });
                        return Ok(());
                    }
                }
                Err(SendError::Fatal(fatal)) => return Err(fatal.to_string()),
                Err(e) => tracing::debug!(error = ?e, "announcing the node start: retrying"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An empty entry so the machine's clock moves; only the leader ticks.
    async fn tick(&mut self) {
        let is_leader = self.raft.metrics().borrow().state == ServerState::Leader;
        if !is_leader {
            return;
        }
        let entry = Arc::new(Entry {
            now_ms: now_ms(),
            commands: Vec::new(),
            origin: None,
        });
        // The outcome does not matter: a lost tick is followed by the next one. The answer is
        // still taken (openraft warns about every answer nobody receives).
        if let Ok(answer) = self.raft.client_write_ff(entry).await {
            tokio::spawn(async move {
                let _ = answer.await;
            });
        }
    }

    fn fail_all(&mut self, run: &mut Run, fatal: &Fatal<NodeId>) {
        let (code, text) = match fatal {
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
        };
        self.fail_pending(run, code, &text);
    }

    /// Tells every connection with a batch outstanding to close: a client must never wait
    /// forever, nor get a confirm for a publish that was not written.
    fn fail_pending(&self, run: &mut Run, reply_code: u16, reply_text: &str) {
        let conns: BTreeSet<ConnId> = run.pending.drain(..).flat_map(|p| p.conns).collect();
        if conns.is_empty() {
            return;
        }
        tracing::warn!(
            reply_code,
            reply_text,
            connections = conns.len(),
            "outstanding batches abandoned"
        );
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
        self.sink.abandon(effects);
    }
}
