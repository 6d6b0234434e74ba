//! The AMQP 0-9-1 client that `raftmq bench`'s producers and consumers speak: one connection
//! and one channel, the handshake, and the few methods a load generator needs (qos, consume,
//! confirm.select, publish, ack). It is lean where a general client cannot be: the publish
//! method and content header are encoded once per producer and only the body changes, many
//! messages go out in one write, and every frame that comes in from one read is handled before
//! the next read. A load generator must cost the machine less than the broker it measures, or
//! it measures itself.
//!
//! Frames are split and built with the broker's own `protocol` module; method bodies other
//! than the hot ones (deliver, ack, nack) go through amq-protocol.

use amq_protocol::protocol::{basic, channel, confirm, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use amq_protocol::uri::AMQPUri;
use bytes::{Bytes, BytesMut};
use raftmq_broker::protocol::content::ContentHeader;
use raftmq_broker::protocol::frame::{
    put_frame, split_frame, RawFrame, FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    PROTOCOL_HEADER,
};
use raftmq_broker::protocol::method::{decode_method, put_method};
use raftmq_broker::protocol::outbound::put_content;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The one channel a bench connection opens.
const CHANNEL: u16 = 1;
/// The frame size we ask for when the broker leaves it open.
const FRAME_MAX: u32 = 131_072;
/// How long the handshake and each synchronous method may take.
const REPLY_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum WireError {
    #[error("bad uri {0}: {1}")]
    Uri(String, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the broker closed the socket")]
    Eof,
    #[error("no reply from the broker in time")]
    Timeout,
    #[error("the broker closed the {what}: {code} {text}")]
    Closed {
        what: &'static str,
        code: u16,
        text: String,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// What came in, as far as a producer or consumer cares.
#[derive(Debug)]
pub enum Incoming {
    /// A whole delivered message.
    Deliver { delivery_tag: u64, body: Bytes },
    /// A publisher confirm: ack or nack of `delivery_tag` (and all before it if `multiple`).
    Confirm {
        ack: bool,
        delivery_tag: u64,
        multiple: bool,
    },
}

/// Reads frames and puts a delivery's content frames back together.
pub struct Reader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    frame_max: u32,
    /// A delivery whose body is still arriving: its tag, the size announced, the parts so far.
    assembling: Option<(u64, Option<u64>, BytesMut)>,
}

/// Writes frames for the one channel.
pub struct Writer {
    wr: OwnedWriteHalf,
    pub frame_max: u32,
}

/// Opens a connection and channel 1 on it.
pub async fn connect(uri: &str) -> Result<(Reader, Writer), WireError> {
    let parsed: AMQPUri = uri
        .parse()
        .map_err(|e: String| WireError::Uri(uri.to_string(), e))?;
    let auth = &parsed.authority;
    let socket = tokio::time::timeout(
        REPLY_WAIT,
        TcpStream::connect((auth.host.as_str(), auth.port)),
    )
    .await
    .map_err(|_| WireError::Timeout)??;
    socket.set_nodelay(true)?;
    let (rd, wr) = socket.into_split();
    let mut reader = Reader {
        rd,
        buf: BytesMut::with_capacity(256 * 1024),
        frame_max: FRAME_MAX,
        assembling: None,
    };
    let mut writer = Writer {
        wr,
        frame_max: FRAME_MAX,
    };
    tokio::time::timeout(REPLY_WAIT, handshake(&mut reader, &mut writer, &parsed))
        .await
        .map_err(|_| WireError::Timeout)??;
    Ok((reader, writer))
}

async fn handshake(
    reader: &mut Reader,
    writer: &mut Writer,
    uri: &AMQPUri,
) -> Result<(), WireError> {
    writer.wr.write_all(&PROTOCOL_HEADER).await?;
    match reader.next_method().await? {
        AMQPClass::Connection(connection::AMQPMethod::Start(_)) => {}
        other => return Err(unexpected("connection.start", &other)),
    }
    let mut capabilities = FieldTable::default();
    for name in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
    ] {
        capabilities.insert(name.into(), AMQPValue::Boolean(true));
    }
    let mut properties = FieldTable::default();
    properties.insert(
        "product".into(),
        AMQPValue::LongString("raftmq bench".into()),
    );
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    let user = &uri.authority.userinfo;
    let response = format!("\0{}\0{}", user.username, user.password);
    writer
        .method(AMQPClass::Connection(connection::AMQPMethod::StartOk(
            connection::StartOk {
                client_properties: properties,
                mechanism: "PLAIN".into(),
                response: response.into(),
                locale: "en_US".into(),
            },
        )))
        .await?;
    let tune = match reader.next_method().await? {
        AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
        other => return Err(unexpected("connection.tune", &other)),
    };
    let frame_max = match tune.frame_max {
        0 => FRAME_MAX,
        n => n.min(FRAME_MAX),
    };
    reader.frame_max = frame_max;
    writer.frame_max = frame_max;
    writer
        .method(AMQPClass::Connection(connection::AMQPMethod::TuneOk(
            connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max,
                heartbeat: 0,
            },
        )))
        .await?;
    writer
        .method(AMQPClass::Connection(connection::AMQPMethod::Open(
            connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            },
        )))
        .await?;
    match reader.next_method().await? {
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
        other => return Err(unexpected("connection.open-ok", &other)),
    }
    writer
        .method(AMQPClass::Channel(channel::AMQPMethod::Open(
            channel::Open {},
        )))
        .await?;
    match reader.next_method().await? {
        AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => Ok(()),
        other => Err(unexpected("channel.open-ok", &other)),
    }
}

fn unexpected(wanted: &str, got: &AMQPClass) -> WireError {
    WireError::Protocol(format!("expected {wanted}, got {got:?}"))
}

/// A method the broker sent that ends the connection or channel, as an error.
fn closing(method: &AMQPClass) -> Option<WireError> {
    match method {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Some(WireError::Closed {
            what: "connection",
            code: c.reply_code,
            text: c.reply_text.to_string(),
        }),
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Some(WireError::Closed {
            what: "channel",
            code: c.reply_code,
            text: c.reply_text.to_string(),
        }),
        _ => None,
    }
}

impl Reader {
    /// Reads more bytes from the socket.
    async fn fill(&mut self) -> Result<(), WireError> {
        if self.buf.capacity() - self.buf.len() < 64 * 1024 {
            self.buf.reserve(256 * 1024);
        }
        match self.rd.read_buf(&mut self.buf).await? {
            0 => Err(WireError::Eof),
            _ => Ok(()),
        }
    }

    fn split(&mut self) -> Result<Option<RawFrame>, WireError> {
        split_frame(&mut self.buf, self.frame_max).map_err(|e| WireError::Protocol(e.to_string()))
    }

    /// The next method on any channel (handshake and synchronous replies).
    async fn next_method(&mut self) -> Result<AMQPClass, WireError> {
        loop {
            while let Some(frame) = self.split()? {
                if frame.kind == FRAME_METHOD {
                    return decode_method(&frame.payload)
                        .map_err(|e| WireError::Protocol(e.to_string()));
                }
            }
            self.fill().await?;
        }
    }

    /// Waits for the reply a synchronous method expects; a close on the way is the error.
    pub async fn expect(
        &mut self,
        wanted: &str,
        is_it: impl Fn(&AMQPClass) -> bool,
    ) -> Result<AMQPClass, WireError> {
        tokio::time::timeout(REPLY_WAIT, async {
            loop {
                let method = self.next_method().await?;
                if is_it(&method) {
                    return Ok(method);
                }
                if let Some(err) = closing(&method) {
                    return Err(err);
                }
                tracing::debug!(?method, wanted, "ignored while waiting for a reply");
            }
        })
        .await
        .map_err(|_| WireError::Timeout)?
    }

    /// Hands every whole message or confirm already buffered to `each`; if that was none,
    /// reads once from the socket (waiting for it) and hands out what is whole then. Frames
    /// buffered behind a synchronous reply must go first: a consumer whose prefetch they
    /// fill would otherwise wait for bytes that the broker sends only after its acks.
    pub async fn read_some(&mut self, mut each: impl FnMut(Incoming)) -> Result<(), WireError> {
        let mut handed = false;
        self.drain(|incoming| {
            handed = true;
            each(incoming)
        })?;
        if handed {
            return Ok(());
        }
        self.fill().await?;
        self.drain(each)
    }

    /// Hands every whole message or confirm already buffered to `each`.
    fn drain(&mut self, mut each: impl FnMut(Incoming)) -> Result<(), WireError> {
        while let Some(frame) = self.split()? {
            match frame.kind {
                FRAME_METHOD => {
                    if let Some(incoming) = self.method(&frame.payload)? {
                        each(incoming);
                    }
                }
                FRAME_HEADER => {
                    let Some((_, size, _)) = self.assembling.as_mut() else {
                        return Err(WireError::Protocol(
                            "content header without a method".into(),
                        ));
                    };
                    let body_size = ContentHeader::parse(&frame.payload)
                        .map_err(|e| WireError::Protocol(e.to_string()))?
                        .body_size;
                    *size = Some(body_size);
                    if body_size == 0 {
                        let (tag, _, body) = self.assembling.take().expect("assembling");
                        each(Incoming::Deliver {
                            delivery_tag: tag,
                            body: body.freeze(),
                        });
                    }
                }
                FRAME_BODY => {
                    let Some((_, Some(size), body)) = self.assembling.as_mut() else {
                        return Err(WireError::Protocol("body frame without a header".into()));
                    };
                    let whole = if body.is_empty() && frame.payload.len() as u64 == *size {
                        Some(frame.payload)
                    } else {
                        body.extend_from_slice(&frame.payload);
                        (body.len() as u64 >= *size).then(|| std::mem::take(body).freeze())
                    };
                    if let Some(body) = whole {
                        let (tag, ..) = self.assembling.take().expect("assembling");
                        each(Incoming::Deliver {
                            delivery_tag: tag,
                            body,
                        });
                    }
                }
                FRAME_HEARTBEAT => {}
                other => return Err(WireError::Protocol(format!("frame type {other}"))),
            }
        }
        Ok(())
    }

    /// A method frame: deliver, ack and nack are read by hand; a close is the error.
    fn method(&mut self, payload: &[u8]) -> Result<Option<Incoming>, WireError> {
        let short = |what: &str| WireError::Protocol(format!("short {what}"));
        let head = payload.get(..4).ok_or_else(|| short("method"))?;
        let ids = (
            u16::from_be_bytes([head[0], head[1]]),
            u16::from_be_bytes([head[2], head[3]]),
        );
        match ids {
            (60, 60) => {
                // basic.deliver: consumer-tag (short string), delivery-tag, ...
                let tag_len = *payload.get(4).ok_or_else(|| short("deliver"))? as usize;
                let at = 5 + tag_len;
                let tag = payload.get(at..at + 8).ok_or_else(|| short("deliver"))?;
                let delivery_tag = u64::from_be_bytes(tag.try_into().expect("8 bytes"));
                self.assembling = Some((delivery_tag, None, BytesMut::new()));
                Ok(None)
            }
            (60, 80) | (60, 120) => {
                let fields = payload.get(4..13).ok_or_else(|| short("ack"))?;
                Ok(Some(Incoming::Confirm {
                    ack: ids.1 == 80,
                    delivery_tag: u64::from_be_bytes(fields[..8].try_into().expect("8 bytes")),
                    multiple: fields[8] & 1 == 1,
                }))
            }
            _ => {
                let method =
                    decode_method(payload).map_err(|e| WireError::Protocol(e.to_string()))?;
                match closing(&method) {
                    Some(err) => Err(err),
                    // connection.blocked and the like: nothing to do for a load generator.
                    None => Ok(None),
                }
            }
        }
    }
}

impl Writer {
    /// Sends a method: connection methods on channel 0, the rest on the bench's channel.
    async fn method(&mut self, method: AMQPClass) -> Result<(), WireError> {
        let channel = match method {
            AMQPClass::Connection(_) => 0,
            _ => CHANNEL,
        };
        let mut out = BytesMut::new();
        put_method(&mut out, channel, method);
        self.wr.write_all(&out).await?;
        Ok(())
    }

    /// Writes bytes built with [`put_ack`] and [`Publisher::put`].
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.wr.write_all(bytes).await?;
        Ok(())
    }

    /// Writes what the socket takes now of `bytes`, at least one byte; returns how many.
    pub async fn write_some(&mut self, bytes: &[u8]) -> Result<usize, WireError> {
        match self.wr.write(bytes).await? {
            0 => Err(WireError::Eof),
            n => Ok(n),
        }
    }
}

/// basic.qos with a prefetch count.
pub async fn qos(r: &mut Reader, w: &mut Writer, prefetch: u16) -> Result<(), WireError> {
    w.method(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
        prefetch_count: prefetch,
        global: false,
    })))
    .await?;
    r.expect("basic.qos-ok", |m| {
        matches!(m, AMQPClass::Basic(basic::AMQPMethod::QosOk(_)))
    })
    .await
    .map(|_| ())
}

/// confirm.select.
pub async fn confirm_select(r: &mut Reader, w: &mut Writer) -> Result<(), WireError> {
    w.method(AMQPClass::Confirm(confirm::AMQPMethod::Select(
        confirm::Select { nowait: false },
    )))
    .await?;
    r.expect("confirm.select-ok", |m| {
        matches!(m, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)))
    })
    .await
    .map(|_| ())
}

/// basic.consume with manual acks.
pub async fn consume(
    r: &mut Reader,
    w: &mut Writer,
    queue: &str,
    consumer_tag: &str,
) -> Result<(), WireError> {
    w.method(AMQPClass::Basic(basic::AMQPMethod::Consume(
        basic::Consume {
            queue: queue.into(),
            consumer_tag: consumer_tag.into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        },
    )))
    .await?;
    r.expect("basic.consume-ok", |m| {
        matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))
    })
    .await
    .map(|_| ())
}

/// Closes the connection politely, waiting a little for close-ok.
pub async fn close(r: &mut Reader, w: &mut Writer) {
    let sent = w
        .method(AMQPClass::Connection(connection::AMQPMethod::Close(
            connection::Close {
                reply_code: 200,
                reply_text: "bench done".into(),
                class_id: 0,
                method_id: 0,
            },
        )))
        .await;
    if sent.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match r.next_method().await {
                    Ok(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) | Err(_) => {
                        return
                    }
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// Appends basic.ack (by hand: it is sent once per message or per few).
pub fn put_ack(out: &mut BytesMut, delivery_tag: u64, multiple: bool) {
    let mut payload = [0u8; 13];
    payload[..2].copy_from_slice(&60u16.to_be_bytes());
    payload[2..4].copy_from_slice(&80u16.to_be_bytes());
    payload[4..12].copy_from_slice(&delivery_tag.to_be_bytes());
    payload[12] = u8::from(multiple);
    put_frame(out, FRAME_METHOD, CHANNEL, &payload);
}

/// A producer's basic.publish method frame and properties, encoded once; [`Publisher::put`]
/// adds the content header and body frames for each message.
pub struct Publisher {
    method: BytesMut,
    /// The properties blob: only delivery-mode (flag bit 12) when persistent, else none.
    properties: &'static [u8],
    frame_max: u32,
}

impl Publisher {
    pub fn new(exchange: &str, routing_key: &str, persistent: bool, frame_max: u32) -> Publisher {
        let mut method = BytesMut::new();
        put_method(
            &mut method,
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        );
        let properties: &'static [u8] = if persistent {
            &[0x10, 0x00, 2]
        } else {
            &[0, 0]
        };
        Publisher {
            method,
            properties,
            frame_max,
        }
    }

    /// Appends one publish of `body`.
    pub fn put(&self, out: &mut BytesMut, body: &[u8]) {
        out.extend_from_slice(&self.method);
        put_content(out, CHANNEL, self.properties, body, self.frame_max);
    }
}
