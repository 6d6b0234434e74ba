//! The pure, deterministic broker state machine: `State::apply(index, entry) -> effects`.
//! No I/O, no clock (time is `Entry::now_ms`), no randomness, no hash-order iteration.
//! Everything durable the broker knows lives in `State`: exchanges, bindings, queues and their
//! messages, consumers, channels' unacknowledged deliveries.

pub mod command;
pub mod effect;

use command::Entry;
use effect::Effect;
use serde::{Deserialize, Serialize};

/// The whole replicated broker state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Highest log index applied (0 before the first).
    pub last_index: u64,
    /// The machine's clock: max of all `Entry::now_ms` seen.
    pub now_ms: u64,
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// Applies one committed log entry and returns what should happen outside.
    pub fn apply(&mut self, index: u64, entry: &Entry) -> Vec<Effect> {
        self.last_index = index;
        self.now_ms = self.now_ms.max(entry.now_ms);
        Vec::new()
    }

    /// Encodes the state for a snapshot (version byte first).
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend(postcard::to_allocvec(self).expect("state serializes"));
        out
    }

    pub fn decode_snapshot(bytes: &[u8]) -> Result<State, command::EntryDecodeError> {
        match bytes.split_first() {
            None => Err(command::EntryDecodeError::Empty),
            Some((1, rest)) => Ok(postcard::from_bytes(rest)?),
            Some((v, _)) => Err(command::EntryDecodeError::Version(*v)),
        }
    }
}
