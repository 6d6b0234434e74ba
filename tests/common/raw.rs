//! A deliberately minimal AMQP client over a raw socket, for sending what no client library
//! would: garbage, oversized frames, bad frame ends, methods out of place.

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{channel, connection, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Raw {
    pub s: TcpStream,
    buf: Vec<u8>,
}

pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    let ctx = gen_frame(frame)(WriteContext::from(Vec::new())).expect("encode");
    ctx.write
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw { s, buf: Vec::new() }
    }

    /// Header, StartOk (PLAIN guest/guest), TuneOk, Open "/": an open connection.
    pub fn open(port: u16) -> Raw {
        Raw::open_with_heartbeat(port, 0)
    }

    pub fn open_with_heartbeat(port: u16, heartbeat: u16) -> Raw {
        let mut raw = Raw::connect(port);
        raw.s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
        raw.expect_method();
        raw.send(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from("\0guest\0guest"),
                locale: "en_US".into(),
            })),
        ));
        raw.expect_method();
        raw.send(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 10,
                frame_max: 4096,
                heartbeat,
            })),
        ));
        raw.send(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ));
        raw.expect_method();
        raw
    }

    pub fn open_channel(&mut self, id: u16) {
        self.send(AMQPFrame::Method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ));
        self.expect_method();
    }

    pub fn send(&mut self, frame: AMQPFrame) {
        self.s.write_all(&encode(&frame)).unwrap();
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next frame, or None when the socket closed.
    pub fn next_frame(&mut self) -> Option<AMQPFrame> {
        loop {
            if !self.buf.is_empty() {
                if let Ok((rest, frame)) = parse_frame(&self.buf[..]) {
                    let used = self.buf.len() - rest.len();
                    self.buf.drain(..used);
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn expect_method(&mut self) -> AMQPClass {
        loop {
            match self.next_frame() {
                Some(AMQPFrame::Method(_, m)) => return m,
                Some(_) => continue,
                None => panic!("socket closed while waiting for a method"),
            }
        }
    }

    /// Reads until connection.close arrives; returns its reply code.
    pub fn expect_connection_close(&mut self) -> u16 {
        loop {
            match self.next_frame() {
                Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                )) => return c.reply_code,
                Some(_) => continue,
                None => panic!("socket closed without connection.close"),
            }
        }
    }

    /// Reads until channel.close arrives on `id`; returns its reply code.
    pub fn expect_channel_close(&mut self, id: u16) -> u16 {
        loop {
            match self.next_frame() {
                Some(AMQPFrame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(c))))
                    if ch == id =>
                {
                    return c.reply_code
                }
                Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)),
                )) => {
                    panic!(
                        "connection closed ({}) instead of channel {id}",
                        c.reply_code
                    )
                }
                Some(_) => continue,
                None => panic!("socket closed without channel.close"),
            }
        }
    }
}
