//! The connection handshake (spec 2.2.4): protocol header, Start/StartOk with SASL, Tune/TuneOk,
//! Open/OpenOk on vhost `/`. Refusals use RabbitMQ's codes and texts: a wrong protocol header
//! gets our header back and a closed socket; bad credentials get 403 ACCESS_REFUSED (the
//! `authentication_failure_close` capability); an unknown vhost gets 530 NOT_ALLOWED.

use super::auth::{parse_response, AuthError};
use super::HardError;
use crate::protocol::frame::{
    split_frame, RawFrame, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_MIN_SIZE, PROTOCOL_HEADER,
};
use crate::protocol::method::{decode_method, put_method};
use crate::reply_code::{self, ACCESS_REFUSED, COMMAND_INVALID, FRAME_ERROR, NOT_ALLOWED};
use crate::server::Broker;
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::BytesMut;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tracing::{debug, info, warn};

/// What the handshake settled.
pub(crate) struct Negotiated {
    pub user: String,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat_s: u16,
    /// The client understands server-sent basic.cancel (consumer_cancel_notify).
    pub cancel_notify: bool,
}

/// Why a handshake ended without a connection. The peer has been told, where the protocol
/// allows telling it.
// The fields are read through Debug, in the log line that ends the connection.
#[allow(dead_code)]
#[derive(Debug)]
pub(crate) enum HandshakeFailed {
    BadHeader,
    Io(std::io::Error),
    Refused(HardError),
}

impl From<std::io::Error> for HandshakeFailed {
    fn from(e: std::io::Error) -> Self {
        HandshakeFailed::Io(e)
    }
}

/// Frames larger than this are refused before Tune settles frame_max (StartOk carries the
/// client properties, which can be a few KiB).
const PRE_TUNE_FRAME_MAX: u32 = 131_072;

pub(crate) async fn negotiate(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    rbuf: &mut BytesMut,
    broker: &Broker,
    peer: SocketAddr,
) -> Result<Negotiated, HandshakeFailed> {
    while rbuf.len() < 8 {
        if rd.read_buf(rbuf).await? == 0 {
            return Err(HandshakeFailed::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
    }
    if rbuf[..8] != PROTOCOL_HEADER {
        // Spec 4.2.2: answer with the protocol header we do speak, then close.
        debug!(header = ?&rbuf[..8], "bad protocol header");
        wr.write_all(&PROTOCOL_HEADER).await?;
        let _ = wr.shutdown().await;
        return Err(HandshakeFailed::BadHeader);
    }
    let _ = rbuf.split_to(8);

    let config = &broker.config;
    let mut out = BytesMut::new();
    put_method(
        &mut out,
        0,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(&config.cluster_name),
            mechanisms: LongString::from("PLAIN AMQPLAIN"),
            locales: LongString::from("en_US"),
        })),
    );
    wr.write_all(&out).await?;

    let start_ok = match expect_method(rd, wr, rbuf, PRE_TUNE_FRAME_MAX).await? {
        AMQPClass::Connection(connection::AMQPMethod::StartOk(s)) => s,
        other => return refuse(wr, unexpected(&other)).await,
    };
    let cancel_notify = capability(&start_ok.client_properties, "consumer_cancel_notify");
    let mechanism = start_ok.mechanism.as_str().to_string();
    let creds = match parse_response(&mechanism, start_ok.response.as_bytes()) {
        Ok(c) => c,
        Err(AuthError::UnknownMechanism(m)) => {
            let text = reply_code::text(
                COMMAND_INVALID,
                format!("unknown authentication mechanism '{m}'"),
            );
            return refuse(wr, HardError::new(COMMAND_INVALID, text, 10, 11)).await;
        }
        Err(AuthError::Refused { reason, .. }) => {
            warn!(%peer, %reason, "login refused");
            return refuse(wr, login_refused(&mechanism)).await;
        }
    };
    if let Err(reason) = config.users.check(&creds, peer.ip()) {
        warn!(%peer, %reason, "login refused");
        return refuse(wr, login_refused(&mechanism)).await;
    }

    out.clear();
    put_method(
        &mut out,
        0,
        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: config.channel_max,
            frame_max: config.frame_max,
            heartbeat: config.heartbeat_s,
        })),
    );
    wr.write_all(&out).await?;

    let tune_ok = match expect_method(rd, wr, rbuf, PRE_TUNE_FRAME_MAX).await? {
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(t)) => t,
        other => return refuse(wr, unexpected(&other)).await,
    };
    let frame_max = if tune_ok.frame_max == 0 {
        config.frame_max
    } else {
        tune_ok.frame_max
    };
    if frame_max < FRAME_MIN_SIZE || frame_max > config.frame_max {
        let text = reply_code::text(
            NOT_ALLOWED,
            format!(
                "frame_max={} outside the allowed range {}..={}",
                tune_ok.frame_max, FRAME_MIN_SIZE, config.frame_max
            ),
        );
        return refuse(wr, HardError::new(NOT_ALLOWED, text, 10, 31)).await;
    }
    let channel_max = if tune_ok.channel_max == 0 {
        config.channel_max
    } else {
        tune_ok.channel_max
    };
    if channel_max > config.channel_max {
        let text = reply_code::text(
            NOT_ALLOWED,
            format!(
                "negotiated channel_max = {} is higher than the maximum allowed value ({})",
                channel_max, config.channel_max
            ),
        );
        return refuse(wr, HardError::new(NOT_ALLOWED, text, 10, 31)).await;
    }

    let open = match expect_method(rd, wr, rbuf, frame_max).await? {
        AMQPClass::Connection(connection::AMQPMethod::Open(o)) => o,
        other => return refuse(wr, unexpected(&other)).await,
    };
    if open.virtual_host.as_str() != "/" {
        let text = reply_code::text(
            NOT_ALLOWED,
            format!("vhost {} not found", open.virtual_host.as_str()),
        );
        return refuse(wr, HardError::new(NOT_ALLOWED, text, 10, 40)).await;
    }
    out.clear();
    put_method(
        &mut out,
        0,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    );
    wr.write_all(&out).await?;
    info!(user = %creds.user, frame_max, channel_max, heartbeat = tune_ok.heartbeat, "connection open");
    Ok(Negotiated {
        user: creds.user,
        frame_max,
        channel_max,
        heartbeat_s: tune_ok.heartbeat,
        cancel_notify,
    })
}

fn login_refused(mechanism: &str) -> HardError {
    let text = reply_code::text(
        ACCESS_REFUSED,
        format!("Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."),
    );
    HardError::new(ACCESS_REFUSED, text, 10, 11)
}

fn unexpected(method: &AMQPClass) -> HardError {
    let text = reply_code::text(
        COMMAND_INVALID,
        "unexpected method during the connection handshake",
    );
    let (class_id, method_id) = super::method_ids(method);
    HardError::new(COMMAND_INVALID, text, class_id, method_id)
}

/// Sends connection.close and gives up on the connection (without waiting for close-ok:
/// the peer is not one we keep talking to).
async fn refuse<T>(wr: &mut OwnedWriteHalf, err: HardError) -> Result<T, HandshakeFailed> {
    let mut out = BytesMut::new();
    super::put_connection_close(&mut out, &err);
    let _ = wr.write_all(&out).await;
    let _ = wr.flush().await;
    Err(HandshakeFailed::Refused(err))
}

async fn read_frame(
    rd: &mut OwnedReadHalf,
    rbuf: &mut BytesMut,
    frame_max: u32,
) -> Result<Result<RawFrame, HardError>, HandshakeFailed> {
    loop {
        match split_frame(rbuf, frame_max) {
            Ok(Some(frame)) => return Ok(Ok(frame)),
            Ok(None) => {
                if rd.read_buf(rbuf).await? == 0 {
                    return Err(HandshakeFailed::Io(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
            }
            Err(e) => {
                return Ok(Err(HardError::new(
                    FRAME_ERROR,
                    reply_code::text(FRAME_ERROR, e),
                    0,
                    0,
                )))
            }
        }
    }
}

async fn expect_method(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    rbuf: &mut BytesMut,
    frame_max: u32,
) -> Result<AMQPClass, HandshakeFailed> {
    loop {
        let frame = match read_frame(rd, rbuf, frame_max).await? {
            Ok(f) => f,
            Err(e) => return refuse(wr, e).await,
        };
        match frame.kind {
            FRAME_HEARTBEAT => continue,
            FRAME_METHOD if frame.channel == 0 => match decode_method(&frame.payload) {
                Ok(m) => return Ok(m),
                Err(e) => {
                    let (c, m) = e.ids();
                    return refuse(
                        wr,
                        HardError::new(e.reply_code(), reply_code::text(e.reply_code(), &e), c, m),
                    )
                    .await;
                }
            },
            _ => {
                let text =
                    reply_code::text(COMMAND_INVALID, "expected a connection method on channel 0");
                return refuse(wr, HardError::new(COMMAND_INVALID, text, 0, 0)).await;
            }
        }
    }
}

fn capability(client_properties: &FieldTable, name: &str) -> bool {
    match client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

fn server_properties(cluster_name: &str) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        caps.insert(ShortString::from(cap), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    props.insert("product".into(), text("RaftMQ"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert("copyright".into(), text("The RaftMQ authors"));
    props.insert(
        "information".into(),
        text("An AMQP 0-9-1 broker replicated with Raft"),
    );
    props.insert("cluster_name".into(), text(cluster_name));
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props
}
