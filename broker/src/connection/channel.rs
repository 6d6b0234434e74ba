//! What a connection remembers about each of its channels, with no I/O: whether it is open or
//! closing, the content of a publish being assembled from header and body frames, publisher
//! confirm numbering and the folding of confirms into `multiple` acks, and the buffer of a
//! transaction. Deliveries, consumers and unacknowledged messages are not here: they are
//! replicated state, in the machine.

use crate::ids::ChannelRef;
use crate::machine::command::{Publish, Settle};
use bytes::{Bytes, BytesMut};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Open,
    /// We sent channel.close (an error) and wait for the client's close-ok; every other frame
    /// on the channel is dropped, as RabbitMQ does.
    ServerClosing,
    /// The client sent channel.close; close-ok goes out when the machine has cleaned up.
    ClientClosing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Confirm,
    Tx,
}

/// A publish waiting for its content frames.
#[derive(Debug)]
pub struct PendingPublish {
    pub exchange: String,
    pub routing_key: String,
    pub mandatory: bool,
    /// Set once the header arrived.
    pub header: Option<PendingHeader>,
    pub chunks: Vec<Bytes>,
    pub received: u64,
}

#[derive(Debug)]
pub struct PendingHeader {
    pub body_size: u64,
    pub properties: Bytes,
    pub persistent: bool,
    pub priority: u8,
    pub expiration_ms: Option<u64>,
}

impl PendingPublish {
    /// The message's properties and body, copied together into one buffer of their exact
    /// size. The frames are slices of the connection's 64 KiB read buffers; a queued message
    /// that kept such a slice would keep its whole read buffer alive (the log's newest entries
    /// and the queues share the proposed command), so one message left in a queue could hold
    /// 64 KiB. One copy of the message is what the log's encoding cost anyway.
    pub fn take_message(&mut self, properties: &Bytes) -> (Bytes, Bytes) {
        let mut all = BytesMut::with_capacity(properties.len() + self.received as usize);
        all.extend_from_slice(properties);
        for c in self.chunks.drain(..) {
            all.extend_from_slice(&c);
        }
        let mut all = all.freeze();
        let body = all.split_off(properties.len());
        (all, body)
    }
}

#[derive(Debug)]
pub struct Slot {
    pub chref: ChannelRef,
    pub phase: Phase,
    pub mode: Mode,
    /// Last publisher-confirm sequence number handed out (the first publish is 1).
    pub publish_seq: u64,
    pub content: Option<PendingPublish>,
    pub tx_publishes: Vec<Publish>,
    pub tx_settles: Vec<Settle>,
    /// Confirms that arrived in the current batch of effects, in order.
    pub pending_confirms: Vec<(u64, bool)>,
    /// The queue most recently declared on this channel: an empty queue name in later
    /// methods means this one (AMQP 0-9-1 spec, queue.bind and others).
    pub last_queue: Option<String>,
    /// basic.recover-async has no reply: swallow that many RecoverOk.
    pub silent_recovers: u32,
}

impl Slot {
    pub fn new(chref: ChannelRef) -> Slot {
        Slot {
            chref,
            phase: Phase::Open,
            mode: Mode::Plain,
            publish_seq: 0,
            content: None,
            tx_publishes: Vec::new(),
            tx_settles: Vec::new(),
            pending_confirms: Vec::new(),
            last_queue: None,
            silent_recovers: 0,
        }
    }
}

/// One confirm frame to send: `basic.ack`/`basic.nack` with this tag and `multiple` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfirmFrame {
    pub delivery_tag: u64,
    pub multiple: bool,
    pub ack: bool,
}

/// Folds confirms (which the machine emits in sequence order, one per publish) into as few
/// frames as possible: a run of two or more acks becomes one `multiple=true` ack for the
/// highest tag, which is correct because every lower tag was confirmed before it.
pub fn fold_confirms(confirms: &[(u64, bool)]) -> Vec<ConfirmFrame> {
    let mut frames = Vec::new();
    let mut run: Option<(u64, usize)> = None; // (last tag, length) of the current ack run
    for &(seq, ack) in confirms {
        if ack {
            run = Some(match run {
                Some((_, n)) => (seq, n + 1),
                None => (seq, 1),
            });
        } else {
            if let Some((tag, n)) = run.take() {
                frames.push(ConfirmFrame {
                    delivery_tag: tag,
                    multiple: n > 1,
                    ack: true,
                });
            }
            frames.push(ConfirmFrame {
                delivery_tag: seq,
                multiple: false,
                ack: false,
            });
        }
    }
    if let Some((tag, n)) = run {
        frames.push(ConfirmFrame {
            delivery_tag: tag,
            multiple: n > 1,
            ack: true,
        });
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_acks_fold_into_one_multiple_ack_and_nacks_stay_single() {
        let frames = fold_confirms(&[
            (1, true),
            (2, true),
            (3, false),
            (4, true),
            (5, true),
            (6, true),
        ]);
        assert_eq!(
            frames,
            vec![
                ConfirmFrame {
                    delivery_tag: 2,
                    multiple: true,
                    ack: true
                },
                ConfirmFrame {
                    delivery_tag: 3,
                    multiple: false,
                    ack: false
                },
                ConfirmFrame {
                    delivery_tag: 6,
                    multiple: true,
                    ack: true
                },
            ]
        );
        assert_eq!(
            fold_confirms(&[(9, true)]),
            vec![ConfirmFrame {
                delivery_tag: 9,
                multiple: false,
                ack: true
            }]
        );
    }
}
