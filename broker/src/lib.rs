//! RaftMQ's broker: everything that speaks AMQP 0-9-1 and decides what happens to messages,
//! and nothing of Raft.
//!
//! - [`ids`]: who a command came from and whom an effect is for.
//! - [`reply_code`]: AMQP reply codes and RabbitMQ's reply-text shape.
//! - [`shared_bytes`]: message bodies decoded as slices of a snapshot or log buffer.
//! - [`machine`]: the PURE state machine (`Command` in, `Effect`s out): exchanges, routing,
//!   queues, consumers, TTL, dead-lettering. Deterministic; replicated by the log.
//! - [`log`]: the boundary to the log: a `Proposer` to submit commands, an `EffectSink` that
//!   receives the effects of applied entries.
//! - `protocol`: frames on the wire (own framing, `amq-protocol` for method bodies).
//! - `connection`: one task per socket: handshake, heartbeats, channels, content assembly,
//!   turning methods into commands and effects into frames.
//! - `dispatch`: routes applied effects to the local connection tasks they name;
//!   `held_effects`: the promises among them that wait for their entry's fsync.
//! - `server`: `serve(listener, ...)`: accepts sockets until shutdown.

pub mod ids;
pub mod log;
pub mod machine;
pub mod protocol;
pub mod reply_code;
pub mod shared_bytes;

// The socket-facing half. `machine_only` lets the state machine be built and tested on its
// own while these change.
#[cfg(not(machine_only))]
pub mod connection;
#[cfg(not(machine_only))]
pub mod dispatch;
#[cfg(not(machine_only))]
mod held_effects;
#[cfg(not(machine_only))]
pub mod server;
