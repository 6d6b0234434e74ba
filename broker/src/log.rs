//! The broker's view of the replicated log, and nothing more: a [`Proposer`] that hands
//! commands to whoever orders them (the `raft` crate), and an [`EffectSink`] that the log's
//! state-machine side calls with the effects of every applied entry, in log order. The broker
//! knows nothing of Raft.

use crate::machine::command::Command;
use crate::machine::effect::Effect;
use thiserror::Error;
use tokio::sync::mpsc;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LogError {
    #[error("the log is shut down")]
    Closed,
}

/// A cloneable handle for proposing commands. `submit` returns once the command is queued for
/// ordering (not once it is committed): its outcome arrives as effects. The queues are bounded,
/// so a full log slows the connections down (and through them, TCP slows the clients).
///
/// There are two lanes, and the log drains the consumer lane first. A connection that has
/// never published submits everything through the consumer lane (`submit_consumer`); its first
/// publish and everything after it go through the ordinary lane (`submit`). So under a flood of
/// publishes, consumers' acks are not stuck behind thousands of them, and consumers keep up
/// (RabbitMQ gets a similar effect from credit flow, which slows publishers down). The order of
/// one connection's commands is kept: its consumer-lane commands were all submitted before its
/// first ordinary-lane one, and the consumer lane is drained first.
#[derive(Clone, Debug)]
pub struct Proposer {
    tx: mpsc::Sender<Command>,
    consumer_tx: mpsc::Sender<Command>,
}

/// The ordering side of [`Proposer`]: the log reads commands from it and batches them.
#[derive(Debug)]
pub struct ProposalReceiver {
    commands: mpsc::Receiver<Command>,
    consumer: mpsc::Receiver<Command>,
}

/// A proposer and its receiving end, with room for `capacity` queued commands in each lane.
pub fn proposal_channel(capacity: usize) -> (Proposer, ProposalReceiver) {
    let (tx, commands) = mpsc::channel(capacity);
    let (consumer_tx, consumer) = mpsc::channel(capacity);
    (
        Proposer { tx, consumer_tx },
        ProposalReceiver { commands, consumer },
    )
}

impl Proposer {
    /// Queues a command in the ordinary lane.
    pub async fn submit(&self, command: Command) -> Result<(), LogError> {
        self.tx.send(command).await.map_err(|_| LogError::Closed)
    }

    /// Queues a command of a connection that has not published (yet) in the consumer lane,
    /// which the log drains first.
    pub async fn submit_consumer(&self, command: Command) -> Result<(), LogError> {
        self.consumer_tx
            .send(command)
            .await
            .map_err(|_| LogError::Closed)
    }
}

impl ProposalReceiver {
    /// The next command, the consumer lane first; None once both lanes are closed and empty.
    pub async fn recv(&mut self) -> Option<Command> {
        let mut consumer_open = true;
        let mut commands_open = true;
        loop {
            tokio::select! {
                biased;
                command = self.consumer.recv(), if consumer_open => match command {
                    Some(command) => return Some(command),
                    None => consumer_open = false,
                },
                command = self.commands.recv(), if commands_open => match command {
                    Some(command) => return Some(command),
                    None => commands_open = false,
                },
                else => return None,
            }
        }
    }

    /// A queued command without waiting, the consumer lane first.
    pub fn try_recv(&mut self) -> Option<Command> {
        self.consumer
            .try_recv()
            .or_else(|_| self.commands.try_recv())
            .ok()
    }

    /// Refuses new commands; those already queued can still be received.
    pub fn close(&mut self) {
        self.consumer.close();
        self.commands.close();
    }
}

/// Receives the effects of each applied entry, in log order. Called from the state machine's
/// apply loop and from the log's writer thread: no method may block.
///
/// An entry may be applied before it is durable: a lone node (standalone, or the active of an
/// active/standby pair) writes an entry, applies it, and fsyncs it while the next batch fills,
/// so that deliveries need not wait for the disk. The sink must then hold every effect that
/// promises something ([`Effect::is_promise`]: a confirm, a declare-ok, ...) until
/// [`durable`](EffectSink::durable) covers its entry, and keep each connection's effects in
/// their order. A cluster node writes each entry durably before it can be committed, so there
/// `durable` is called before the entry is applied and nothing waits.
pub trait EffectSink: Send + Sync + 'static {
    /// The effects of the entry at `index`.
    fn dispatch(&self, index: u64, effects: Vec<Effect>);

    /// Every entry up to and including `index` is on disk (fsync'ed). Called with rising
    /// indexes.
    fn durable(&self, _index: u64) {}

    /// Connection errors for connections whose commands the log can no longer take (it
    /// stopped, or their batches were abandoned): they go out at once, ahead of anything held
    /// for those connections, which will not be released now.
    fn abandon(&self, errors: Vec<Effect>) {
        self.dispatch(0, errors);
    }

    /// The log could not make its writes durable (an fsync failed): what was held for clients
    /// can never be promised, so every local connection should close with an error.
    fn durability_failed(&self) {}

    /// The state was replaced wholesale (a snapshot from the leader was installed): effects of
    /// the entries it covers were never dispatched here, so local connections may have missed
    /// deliveries or replies. The sink should close them; their clients reconnect.
    fn reset(&self) {}
}

/// A sink that drops everything (tests, replay tools).
pub struct DiscardEffects;

impl EffectSink for DiscardEffects {
    fn dispatch(&self, _index: u64, _effects: Vec<Effect>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ChannelRef;
    use crate::machine::command::Settle;
    use crate::machine::tests::testkit::conn;

    #[tokio::test]
    async fn the_consumer_lane_overtakes_queued_commands_and_each_lane_keeps_its_order() {
        let (proposer, mut proposals) = proposal_channel(16);
        let ch = ChannelRef {
            conn: conn(9),
            number: 1,
            generation: 0,
        };
        let ack = |tag| Command::Settle {
            ch,
            settle: Settle::Ack {
                delivery_tag: tag,
                multiple: false,
            },
        };
        for seq in 1..=3 {
            proposer
                .submit(Command::ConnectionClosed { conn: conn(seq) })
                .await
                .unwrap();
        }
        proposer.submit_consumer(ack(1)).await.unwrap();
        proposer.submit_consumer(ack(2)).await.unwrap();
        let mut order = vec![proposals.recv().await.unwrap()];
        while let Some(command) = proposals.try_recv() {
            order.push(command);
        }
        let expected = vec![
            ack(1),
            ack(2),
            Command::ConnectionClosed { conn: conn(1) },
            Command::ConnectionClosed { conn: conn(2) },
            Command::ConnectionClosed { conn: conn(3) },
        ];
        assert_eq!(order, expected);
        drop(proposer);
        assert!(proposals.recv().await.is_none(), "both lanes closed");
    }
}
