//! What the machine remembers per channel and per consumer: delivery tags, unacknowledged
//! deliveries, prefetch limits (basic.qos) and flow. Channels are created lazily by the first
//! command that names a new `ChannelRef`. The operations on them (deliver, settle, requeue)
//! live in `delivery.rs`.
//!
//! Reference: <https://www.rabbitmq.com/docs/consumer-prefetch>,
//! <https://www.rabbitmq.com/docs/confirms>.

use super::queue::{MsgKey, QueuedMessage};
use crate::ids::ChannelRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A delivery the client has not settled yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unacked {
    pub queue_id: u64,
    pub key: MsgKey,
    pub message: Arc<QueuedMessage>,
    /// The consumer it went to; None for basic.get.
    pub consumer: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    /// The last delivery tag used; tags start at 1.
    pub last_delivery_tag: u64,
    pub unacked: BTreeMap<u64, Unacked>,
    /// consumer tag -> consumer id
    pub consumers: BTreeMap<String, u64>,
    /// basic.qos global=false: the limit given to consumers created afterwards (0 = none).
    pub consumer_prefetch: u16,
    /// basic.qos global=true: the limit shared by all consumers of the channel (0 = none).
    pub global_prefetch: u16,
    /// Unacknowledged deliveries to consumers of this channel (what the global limit counts).
    pub consumer_unacked: u32,
    /// channel.flow: false stops deliveries to this channel's consumers.
    pub flow_active: bool,
}

impl Default for Channel {
    fn default() -> Channel {
        Channel {
            last_delivery_tag: 0,
            unacked: BTreeMap::new(),
            consumers: BTreeMap::new(),
            consumer_prefetch: 0,
            global_prefetch: 0,
            consumer_unacked: 0,
            flow_active: true,
        }
    }
}

impl Channel {
    pub fn next_delivery_tag(&mut self) -> u64 {
        self.last_delivery_tag += 1;
        self.last_delivery_tag
    }

    /// Room under the channel-wide (global) prefetch limit.
    pub fn global_room(&self) -> bool {
        self.global_prefetch == 0 || self.consumer_unacked < self.global_prefetch as u32
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    pub ch: ChannelRef,
    pub tag: Arc<str>,
    pub queue_id: u64,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (0 = unlimited), fixed when the consumer was created.
    pub prefetch: u16,
    pub unacked: u32,
}

impl Consumer {
    pub fn own_room(&self) -> bool {
        self.no_ack || self.prefetch == 0 || self.unacked < self.prefetch as u32
    }
}
