//! What a connection remembers about each of its channels, with no I/O: whether it is open or
//! closing, the content of a publish being assembled from header and body frames (and the
//! properties it published with last), publisher confirm numbering and the folding of
//! confirms into `multiple` acks, and the buffer of a transaction. Deliveries, consumers and
//! unacknowledged messages are not here: they are replicated state, in the machine.

use crate::ids::ChannelRef;
use crate::machine::command::{Publish, Settle};
use crate::protocol::content::{decode_properties, parse_expiration, ContentError};
use bytes::Bytes;

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
    pub properties: KnownProperties,
}

/// A content header's properties, copied out of the read buffer, with what the broker reads
/// from them. Validated: a channel error was sent for any that fail.
#[derive(Clone, Debug)]
pub struct KnownProperties {
    /// The raw properties blob (flags word first), shared by every message published with it.
    pub raw: Bytes,
    pub persistent: bool,
    pub priority: u8,
    pub expiration_ms: Option<u64>,
}

/// Why a content header's properties were refused.
#[derive(Debug)]
pub enum BadProperties {
    /// They do not parse: a connection error (frame error).
    Malformed(ContentError),
    /// They parse but may not be published: a channel error (precondition failed).
    Refused(String),
}

impl KnownProperties {
    /// Parses and checks `raw` for a publisher authenticated as `user`, as RabbitMQ does: a
    /// `user_id` must name that user, and an `expiration` must be a whole number of ms.
    pub fn check(raw: &[u8], user: &str) -> Result<KnownProperties, BadProperties> {
        let props = decode_properties(raw).map_err(BadProperties::Malformed)?;
        if let Some(user_id) = props.user_id() {
            if user_id.as_str() != user {
                return Err(BadProperties::Refused(format!(
                    "user_id property set to '{}' but authenticated user was '{user}'",
                    user_id.as_str(),
                )));
            }
        }
        let expiration_ms = match props.expiration() {
            None => None,
            Some(e) => Some(parse_expiration(e.as_str()).ok_or_else(|| {
                BadProperties::Refused(format!("invalid expiration '{}'", e.as_str()))
            })?),
        };
        Ok(KnownProperties {
            raw: Bytes::copy_from_slice(raw),
            persistent: *props.delivery_mode() == Some(2),
            priority: props.priority().unwrap_or(0),
            expiration_ms,
        })
    }
}

/// The properties a channel published with last. Publishers mostly send the same properties
/// with every message: those are then parsed and checked once, and stored once, however many
/// queued messages carry them.
#[derive(Debug, Default)]
pub struct LastProperties(Option<KnownProperties>);

impl LastProperties {
    /// The known properties if `raw` is byte for byte the last ones.
    pub fn matching(&self, raw: &[u8]) -> Option<KnownProperties> {
        self.0.as_ref().filter(|k| k.raw[..] == *raw).cloned()
    }

    pub fn remember(&mut self, known: &KnownProperties) {
        self.0 = Some(known.clone());
    }
}

impl PendingPublish {
    /// The message's body, copied into one buffer of its exact size. The frames are slices of
    /// the connection's 64 KiB read buffers; a queued message that kept such a slice would keep
    /// its whole read buffer alive (the log's newest entries and the queues share the proposed
    /// command), so one message left in a queue could hold 64 KiB. One copy of the message is
    /// what the log's encoding cost anyway. The body gets an allocation of its own, apart from
    /// the properties: a body of a round size (1 KiB) then fills its allocator size class
    /// exactly, where body and properties together took the next class up (1.25 KiB).
    pub fn take_body(&mut self) -> Bytes {
        let body = match self.chunks.as_slice() {
            [one] => Bytes::copy_from_slice(one),
            chunks => {
                let mut all = Vec::with_capacity(self.received as usize);
                for c in chunks {
                    all.extend_from_slice(c);
                }
                Bytes::from(all)
            }
        };
        self.chunks.clear();
        body
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
    pub last_properties: LastProperties,
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
            last_properties: LastProperties::default(),
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
    fn properties_are_checked_once_and_shared_while_they_repeat() {
        // delivery_mode 2 and priority 3 (flags 0x1800).
        let raw = [0x18, 0x00, 2, 3];
        let known = KnownProperties::check(&raw, "guest").unwrap();
        assert!(known.persistent);
        assert_eq!((known.priority, known.expiration_ms), (3, None));
        let mut last = LastProperties::default();
        assert!(last.matching(&raw).is_none());
        last.remember(&known);
        let again = last.matching(&raw).expect("the same bytes match");
        assert_eq!(again.raw.as_ptr(), known.raw.as_ptr(), "one shared copy");
        assert!(
            last.matching(&[0x10, 0x00, 2]).is_none(),
            "other bytes do not"
        );

        // expiration "500" (flags 0x0100).
        let known = KnownProperties::check(&[0x01, 0x00, 3, b'5', b'0', b'0'], "guest").unwrap();
        assert_eq!(known.expiration_ms, Some(500));
        assert!(!known.persistent);
    }

    #[test]
    fn bad_properties_are_told_apart() {
        // The delivery_mode flag with no byte after it.
        assert!(matches!(
            KnownProperties::check(&[0x10, 0x00], "guest"),
            Err(BadProperties::Malformed(_))
        ));
        let Err(BadProperties::Refused(why)) =
            KnownProperties::check(&[0x01, 0x00, 3, b'a', b'b', b'c'], "guest")
        else {
            panic!("a non-numeric expiration is refused");
        };
        assert_eq!(why, "invalid expiration 'abc'");
        // user_id "bob" (flags 0x0010) from a connection of "guest".
        let Err(BadProperties::Refused(why)) =
            KnownProperties::check(&[0x00, 0x10, 3, b'b', b'o', b'b'], "guest")
        else {
            panic!("another user's user_id is refused");
        };
        assert!(why.contains("'bob'") && why.contains("'guest'"), "{why}");
    }

    #[test]
    fn a_body_is_copied_out_of_its_frames_into_its_own_buffer() {
        let frames = Bytes::from_static(b"0123456789abcdef");
        let mut one = PendingPublish {
            exchange: String::new(),
            routing_key: String::new(),
            mandatory: false,
            header: None,
            chunks: vec![frames.slice(2..12)],
            received: 10,
        };
        let body = one.take_body();
        assert_eq!(&body[..], b"23456789ab");
        assert!(
            !frames.as_ptr_range().contains(&body.as_ptr()),
            "the body must not keep the read buffer alive"
        );
        assert!(one.chunks.is_empty());
        let mut two = PendingPublish {
            chunks: vec![frames.slice(0..3), frames.slice(10..16)],
            received: 9,
            ..one
        };
        assert_eq!(&two.take_body()[..], b"012abcdef");
    }

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
