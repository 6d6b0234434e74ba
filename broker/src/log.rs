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
/// ordering (not once it is committed): its outcome arrives as effects. Commands submitted
/// through one handle keep their order in the log. The queue is bounded, so a full log slows
/// the connections down (and through them, TCP slows the clients).
#[derive(Clone, Debug)]
pub struct Proposer {
    tx: mpsc::Sender<Command>,
}

/// The ordering side of [`Proposer`]: the log reads commands from it and batches them.
pub type ProposalReceiver = mpsc::Receiver<Command>;

/// A proposer and its receiving end, with room for `capacity` queued commands.
pub fn proposal_channel(capacity: usize) -> (Proposer, ProposalReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    (Proposer { tx }, rx)
}

impl Proposer {
    pub async fn submit(&self, command: Command) -> Result<(), LogError> {
        self.tx.send(command).await.map_err(|_| LogError::Closed)
    }
}

/// Receives the effects of each applied entry, in log order. Called from the state machine's
/// apply loop: it must not block.
pub trait EffectSink: Send + Sync + 'static {
    fn dispatch(&self, effects: Vec<Effect>);

    /// The state was replaced wholesale (a snapshot from the leader was installed): effects of
    /// the entries it covers were never dispatched here, so local connections may have missed
    /// deliveries or replies. The sink should close them; their clients reconnect.
    fn reset(&self) {}
}

/// A sink that drops everything (tests, replay tools).
pub struct DiscardEffects;

impl EffectSink for DiscardEffects {
    fn dispatch(&self, _effects: Vec<Effect>) {}
}
