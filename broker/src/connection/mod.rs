//! One task per client socket. It reads frames, turns methods into `Command`s for the log,
//! and turns the effects that the log applies for this connection into frames. It holds no
//! replicated state: consumers, deliveries and queues live in the machine; here are only the
//! handshake's outcome, each channel's open/closing phase, content being assembled, confirm
//! numbering and transaction buffers (`channel`).
//!
//! Errors follow RabbitMQ: a soft error closes the channel (channel.close with the code), a
//! hard error closes the connection (connection.close, then we wait a little for close-ok).
//! Neither ever touches another connection.

pub mod auth;
pub mod channel;
mod effects;
mod handshake;
mod inbound;

use crate::ids::ConnId;
use crate::machine::command::Command;
use crate::protocol::frame::split_frame;
use crate::protocol::method::put_method;
use crate::protocol::outbound::put_heartbeat;
use crate::reply_code::{self, CONNECTION_FORCED, FRAME_ERROR};
use crate::server::Broker;
use amq_protocol::protocol::{connection, AMQPClass};
use bytes::{Buf, BytesMut};
use channel::Slot;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How long we wait for the client's connection.close-ok after sending connection.close.
const CLOSE_OK_WAIT: Duration = Duration::from_secs(3);
/// Effects batches handled in one turn of the loop, so a busy mailbox cannot starve the
/// socket's reader and writer forever.
const MAX_EFFECT_BATCHES_PER_TURN: usize = 256;
/// Bytes waiting for the socket at which the connection stops taking effects (deliveries,
/// confirms) from its mailbox. It goes on reading the socket, so a client that stops reading
/// until its own writes (acks) get through is not deadlocked against us.
const OUTPUT_EFFECTS_PAUSE: usize = 1 << 20;
/// Bytes waiting for the socket at which the connection stops reading it too: a client that
/// sends requests and never reads the replies is pushed back by TCP, and its replies cannot
/// take unbounded memory.
const OUTPUT_READ_PAUSE: usize = 8 << 20;
/// How long the last bytes (a connection.close, say) may take to leave once the connection
/// has ended.
const FINAL_WRITE_WAIT: Duration = Duration::from_secs(5);

/// A connection-level error: connection.close with this code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HardError {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl HardError {
    pub fn new(code: u16, text: String, class_id: u16, method_id: u16) -> HardError {
        HardError {
            code,
            text,
            class_id,
            method_id,
        }
    }
}

/// Why the serving loop stops (or starts closing).
#[derive(Debug)]
pub(crate) enum Stop {
    /// Send connection.close with this error, then wait for close-ok.
    Hard(HardError),
    /// A framing error: the byte stream cannot be trusted any more, so say why and hang up.
    Fatal(HardError),
    /// The client closed (we answered close-ok), or completed our close.
    Done,
    /// The socket failed or the peer vanished (or missed heartbeats).
    Gone(String),
    /// The log is shut down: the node is stopping.
    LogClosed,
}

pub(crate) fn put_connection_close(out: &mut BytesMut, err: &HardError) {
    put_method(
        out,
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: err.code,
            reply_text: truncate_short(&err.text).into(),
            class_id: err.class_id,
            method_id: err.method_id,
        })),
    );
}

/// Short strings hold at most 255 bytes; cut texts on a char boundary.
pub(crate) fn truncate_short(s: &str) -> &str {
    if s.len() <= 255 {
        return s;
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The class and method ids of a method, for close frames.
pub(crate) fn method_ids(method: &AMQPClass) -> (u16, u16) {
    use amq_protocol::protocol::*;
    let class_id = method.get_amqp_class_id();
    let method_id = match method {
        AMQPClass::Basic(m) => basic_method_id(m),
        AMQPClass::Connection(m) => match m {
            connection::AMQPMethod::Start(_) => 10,
            connection::AMQPMethod::StartOk(_) => 11,
            connection::AMQPMethod::Secure(_) => 20,
            connection::AMQPMethod::SecureOk(_) => 21,
            connection::AMQPMethod::Tune(_) => 30,
            connection::AMQPMethod::TuneOk(_) => 31,
            connection::AMQPMethod::Open(_) => 40,
            connection::AMQPMethod::OpenOk(_) => 41,
            connection::AMQPMethod::Close(_) => 50,
            connection::AMQPMethod::CloseOk(_) => 51,
            connection::AMQPMethod::Blocked(_) => 60,
            connection::AMQPMethod::Unblocked(_) => 61,
            connection::AMQPMethod::UpdateSecret(_) => 70,
            connection::AMQPMethod::UpdateSecretOk(_) => 71,
        },
        AMQPClass::Channel(m) => match m {
            channel::AMQPMethod::Open(_) => 10,
            channel::AMQPMethod::OpenOk(_) => 11,
            channel::AMQPMethod::Flow(_) => 20,
            channel::AMQPMethod::FlowOk(_) => 21,
            channel::AMQPMethod::Close(_) => 40,
            channel::AMQPMethod::CloseOk(_) => 41,
        },
        AMQPClass::Access(m) => match m {
            access::AMQPMethod::Request(_) => 10,
            access::AMQPMethod::RequestOk(_) => 11,
        },
        AMQPClass::Exchange(m) => match m {
            exchange::AMQPMethod::Declare(_) => 10,
            exchange::AMQPMethod::DeclareOk(_) => 11,
            exchange::AMQPMethod::Delete(_) => 20,
            exchange::AMQPMethod::DeleteOk(_) => 21,
            exchange::AMQPMethod::Bind(_) => 30,
            exchange::AMQPMethod::BindOk(_) => 31,
            exchange::AMQPMethod::Unbind(_) => 40,
            exchange::AMQPMethod::UnbindOk(_) => 51,
        },
        AMQPClass::Queue(m) => match m {
            queue::AMQPMethod::Declare(_) => 10,
            queue::AMQPMethod::DeclareOk(_) => 11,
            queue::AMQPMethod::Bind(_) => 20,
            queue::AMQPMethod::BindOk(_) => 21,
            queue::AMQPMethod::Purge(_) => 30,
            queue::AMQPMethod::PurgeOk(_) => 31,
            queue::AMQPMethod::Delete(_) => 40,
            queue::AMQPMethod::DeleteOk(_) => 41,
            queue::AMQPMethod::Unbind(_) => 50,
            queue::AMQPMethod::UnbindOk(_) => 51,
        },
        AMQPClass::Tx(m) => match m {
            tx::AMQPMethod::Select(_) => 10,
            tx::AMQPMethod::SelectOk(_) => 11,
            tx::AMQPMethod::Commit(_) => 20,
            tx::AMQPMethod::CommitOk(_) => 21,
            tx::AMQPMethod::Rollback(_) => 30,
            tx::AMQPMethod::RollbackOk(_) => 31,
        },
        AMQPClass::Confirm(m) => match m {
            confirm::AMQPMethod::Select(_) => 10,
            confirm::AMQPMethod::SelectOk(_) => 11,
        },
    };
    (class_id, method_id)
}

fn basic_method_id(m: &amq_protocol::protocol::basic::AMQPMethod) -> u16 {
    use amq_protocol::protocol::basic::AMQPMethod::*;
    match m {
        Qos(_) => 10,
        QosOk(_) => 11,
        Consume(_) => 20,
        ConsumeOk(_) => 21,
        Cancel(_) => 30,
        CancelOk(_) => 31,
        Publish(_) => 40,
        Return(_) => 50,
        Deliver(_) => 60,
        Get(_) => 70,
        GetOk(_) => 71,
        GetEmpty(_) => 72,
        Ack(_) => 80,
        Reject(_) => 90,
        RecoverAsync(_) => 100,
        Recover(_) => 110,
        RecoverOk(_) => 111,
        Nack(_) => 120,
    }
}

/// The state of one open connection (after the handshake).
pub(crate) struct Conn {
    pub id: ConnId,
    pub broker: Arc<Broker>,
    pub user: String,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat_s: u16,
    pub cancel_notify: bool,
    pub channels: HashMap<u16, Slot>,
    /// How many times each channel number was opened: the next opening's generation.
    pub generations: HashMap<u16, u32>,
    /// Set by the first publish: from then on this connection's commands take the log's
    /// ordinary lane (before, they take the consumer lane).
    pub has_published: bool,
    pub out: BytesMut,
    /// Set once we sent connection.close: the moment we give up waiting for close-ok.
    pub closing_deadline: Option<Instant>,
    /// Publisher flow control (`Effect::Flow`): the socket is not read until then.
    pub read_paused_until: Option<Instant>,
    rng: u64,
}

/// How long one `Effect::Flow` stops reading a publisher's socket. Short: a publisher whose
/// queue's consumers keep falling behind gets one with nearly every log entry, so the pauses
/// add up to a rate, and a connection that also consumes still reads its acks in between.
pub(crate) const FLOW_PAUSE: Duration = Duration::from_millis(2);

/// Serves one socket from the protocol header to the end.
pub async fn run(
    socket: TcpStream,
    peer: SocketAddr,
    id: ConnId,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
) {
    let (mut rd, mut wr) = socket.into_split();
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let handshake = handshake::negotiate(&mut rd, &mut wr, &mut rbuf, &broker, peer);
    let negotiated = match tokio::time::timeout(broker.config.handshake_timeout, handshake).await {
        Err(_) => {
            info!("closing connection: handshake timeout");
            return;
        }
        Ok(Err(e)) => {
            debug!(error = ?e, "handshake failed");
            return;
        }
        Ok(Ok(n)) => n,
    };
    let mailbox = broker.dispatcher.register(id);
    let seed =
        (id.seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ now_nanos() ^ (peer.port() as u64) << 32;
    let mut conn = Conn {
        id,
        broker: broker.clone(),
        user: negotiated.user,
        frame_max: negotiated.frame_max,
        channel_max: negotiated.channel_max,
        heartbeat_s: negotiated.heartbeat_s,
        cancel_notify: negotiated.cancel_notify,
        channels: HashMap::new(),
        generations: HashMap::new(),
        has_published: false,
        out: BytesMut::with_capacity(64 * 1024),
        closing_deadline: None,
        read_paused_until: None,
        rng: seed | 1,
    };
    let outcome = conn.serve(&mut rd, &mut wr, &mut rbuf, mailbox, stop).await;
    broker.dispatcher.unregister(id);
    match &outcome {
        Stop::Done => info!("connection closed"),
        Stop::Gone(why) => info!(reason = %why, "connection lost"),
        other => info!(outcome = ?other, "connection ended"),
    }
    // Whatever ended the connection, the machine must release what it held: requeue its
    // unacknowledged deliveries, cancel its consumers, drop its exclusive queues.
    let _ = broker
        .proposer
        .submit(Command::ConnectionClosed { conn: id })
        .await;
    let _ = wr.shutdown().await;
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Conn {
    /// A name like RabbitMQ's `amq.gen-…`/`amq.ctag-…`: prefix plus 22 url-safe characters.
    pub(crate) fn generated_name(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut name = String::with_capacity(prefix.len() + 22);
        name.push_str(prefix);
        for _ in 0..22 {
            // xorshift64*: names need to be unique, not secret.
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let v = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
            name.push(ALPHABET[(v >> 58) as usize] as char);
        }
        name
    }

    /// Queues a command for the log: in the consumer lane until this connection's first
    /// publish, in the ordinary lane from then on (see `Proposer`).
    pub(crate) async fn submit(&mut self, command: Command) -> Result<(), Stop> {
        if matches!(command, Command::Publish { .. }) {
            self.has_published = true;
        }
        let proposer = &self.broker.proposer;
        let queued = if self.has_published {
            proposer.submit(command).await
        } else {
            proposer.submit_consumer(command).await
        };
        queued.map_err(|_| Stop::LogClosed)
    }

    fn begin_close(&mut self, err: &HardError) {
        if self.closing_deadline.is_none() {
            warn!(code = err.code, text = %err.text, "closing connection");
            put_connection_close(&mut self.out, err);
            self.closing_deadline = Some(Instant::now() + CLOSE_OK_WAIT);
        }
    }

    async fn serve(
        &mut self,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
        rbuf: &mut BytesMut,
        mut mailbox: crate::dispatch::Mailbox,
        mut stop: watch::Receiver<bool>,
    ) -> Stop {
        let heartbeat = Duration::from_secs(self.heartbeat_s as u64);
        let tick = if self.heartbeat_s > 0 {
            (heartbeat / 2).min(Duration::from_millis(500))
        } else {
            Duration::from_millis(500)
        };
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        let mut stopping = *stop.borrow();
        if stopping {
            self.begin_close(&shutdown_error());
        }
        // Bytes handed to the socket as it takes them. Writing is one branch of the select, not
        // a step after it: while the client is not reading, the connection still reads (acks
        // that the client's own reader waits behind, RabbitMQ's Java client for one).
        let mut pending = BytesMut::new();
        loop {
            let paused_until = self.read_paused_until;
            let take_effects = pending.len() < OUTPUT_EFFECTS_PAUSE;
            let take_input = paused_until.is_none() && pending.len() < OUTPUT_READ_PAUSE;
            let step: Result<(), Stop> = tokio::select! {
                changed = stop.changed(), if !stopping => {
                    stopping = true;
                    if changed.is_ok() || *stop.borrow() {
                        self.begin_close(&shutdown_error());
                    }
                    Ok(())
                }
                written = wr.write(&pending), if !pending.is_empty() => match written {
                    Ok(0) => Err(Stop::Gone("the socket takes no more bytes".into())),
                    Ok(n) => {
                        pending.advance(n);
                        last_write = Instant::now();
                        Ok(())
                    }
                    Err(e) => Err(Stop::Gone(e.to_string())),
                },
                batch = mailbox.recv(), if take_effects => match batch {
                    Some(batch) => {
                        let mut result = self.apply_effects(batch);
                        let mut n = 1;
                        while result.is_ok() && n < MAX_EFFECT_BATCHES_PER_TURN {
                            match mailbox.try_recv() {
                                Ok(more) => { result = self.apply_effects(more); n += 1; }
                                Err(_) => break,
                            }
                        }
                        self.flush_confirms();
                        result
                    }
                    None => Err(Stop::LogClosed),
                },
                _ = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now).into()), if paused_until.is_some() => {
                    self.read_paused_until = None;
                    Ok(())
                }
                read = rd.read_buf(rbuf), if take_input => match read {
                    Ok(0) => Err(Stop::Gone("peer closed the socket".into())),
                    Ok(_) => {
                        last_read = Instant::now();
                        self.handle_input(rbuf).await
                    }
                    Err(e) => Err(Stop::Gone(e.to_string())),
                },
                _ = ticker.tick() => {
                    if let Some(deadline) = self.closing_deadline {
                        if Instant::now() >= deadline {
                            return Stop::Gone("no connection.close-ok in time".into());
                        }
                    }
                    if self.heartbeat_s > 0 {
                        if last_read.elapsed() > heartbeat * 2 {
                            // RabbitMQ closes the socket without a close frame here.
                            return Stop::Gone(format!("missed heartbeats from client, timeout: {}s", self.heartbeat_s));
                        }
                        if last_write.elapsed() >= heartbeat / 2 {
                            put_heartbeat(&mut self.out);
                        }
                    }
                    Ok(())
                }
            };
            let finish = match step {
                Ok(()) => None,
                Err(Stop::Hard(err)) => {
                    self.begin_close(&err);
                    None
                }
                Err(Stop::Fatal(err)) => {
                    self.begin_close(&err);
                    Some(Stop::Fatal(err))
                }
                Err(other) => Some(other),
            };
            if !self.out.is_empty() {
                if pending.is_empty() {
                    std::mem::swap(&mut pending, &mut self.out);
                } else {
                    pending.extend_from_slice(&self.out);
                    self.out.clear();
                }
            }
            if let Some(stop) = finish {
                let last = tokio::time::timeout(FINAL_WRITE_WAIT, wr.write_all(&pending)).await;
                if !matches!(last, Ok(Ok(()))) {
                    debug!(outcome = ?last, "the connection's last bytes were not written");
                    return stop;
                }
                if matches!(stop, Stop::Fatal(_)) {
                    // Give the peer a moment to read the close before the socket goes.
                    let _ = wr.flush().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                return stop;
            }
        }
    }

    /// Splits and handles every whole frame in the read buffer.
    async fn handle_input(&mut self, rbuf: &mut BytesMut) -> Result<(), Stop> {
        loop {
            match split_frame(rbuf, self.frame_max) {
                Ok(Some(frame)) => self.handle_frame(frame).await?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    // Once framing is lost nothing after it can be read: close, then hang up.
                    return Err(Stop::Fatal(HardError::new(
                        FRAME_ERROR,
                        reply_code::text(FRAME_ERROR, e),
                        0,
                        0,
                    )));
                }
            }
        }
    }
}

fn shutdown_error() -> HardError {
    HardError::new(
        CONNECTION_FORCED,
        reply_code::text(
            CONNECTION_FORCED,
            "broker forced connection closure with reason 'shutdown'",
        ),
        0,
        0,
    )
}
