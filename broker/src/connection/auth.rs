//! SASL for Connection.StartOk: PLAIN (`\0user\0password`) and AMQPLAIN (a field table with
//! LOGIN and PASSWORD, sent without its length prefix), and the user table, including
//! RabbitMQ's rule that `guest` may log in only from a loopback address.

use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::AMQPValue;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// The mechanism is neither PLAIN nor AMQPLAIN.
    UnknownMechanism(String),
    /// The response could not be read, or the user/password is wrong, or the user may not
    /// log in from there.
    Refused { mechanism: String, reason: String },
}

/// Reads the credentials out of a StartOk response.
pub fn parse_response(mechanism: &str, response: &[u8]) -> Result<Credentials, AuthError> {
    let refused = |reason: &str| AuthError::Refused {
        mechanism: mechanism.to_string(),
        reason: reason.to_string(),
    };
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next();
            let user = parts
                .next()
                .ok_or_else(|| refused("malformed PLAIN response"))?;
            let password = parts
                .next()
                .ok_or_else(|| refused("malformed PLAIN response"))?;
            Ok(Credentials {
                user: String::from_utf8_lossy(user).into_owned(),
                password: String::from_utf8_lossy(password).into_owned(),
            })
        }
        "AMQPLAIN" => {
            let mut framed = (response.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(response);
            let table = match parse_field_table(&framed[..]) {
                Ok((_, t)) => t,
                Err(_) => return Err(refused("malformed AMQPLAIN response")),
            };
            let get = |key: &str| match table.inner().get(key) {
                Some(AMQPValue::LongString(s)) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
                _ => None,
            };
            match (get("LOGIN"), get("PASSWORD")) {
                (Some(user), Some(password)) => Ok(Credentials { user, password }),
                _ => Err(refused("AMQPLAIN response lacks LOGIN or PASSWORD")),
            }
        }
        other => Err(AuthError::UnknownMechanism(other.to_string())),
    }
}

/// The users allowed to log in.
#[derive(Clone, Debug)]
pub struct Users {
    users: Vec<Credentials>,
}

impl Users {
    /// `guest/guest` (loopback only, as in RabbitMQ), plus one configured user if given.
    pub fn new(default_user: Option<(String, String)>) -> Users {
        let mut users = vec![Credentials {
            user: "guest".into(),
            password: "guest".into(),
        }];
        if let Some((user, password)) = default_user {
            users.retain(|c| c.user != user);
            users.push(Credentials { user, password });
        }
        Users { users }
    }

    /// Checks a login; `Err` carries the reason for the log (the client only hears
    /// "login refused", as RabbitMQ does).
    pub fn check(&self, creds: &Credentials, peer: IpAddr) -> Result<(), String> {
        let known = self
            .users
            .iter()
            .any(|c| c.user == creds.user && c.password == creds.password);
        if !known {
            return Err(format!("user '{}' - invalid credentials", creds.user));
        }
        if creds.user == "guest" && !peer.is_loopback() && !is_mapped_loopback(peer) {
            return Err("user 'guest' can only connect via localhost".into());
        }
        Ok(())
    }
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_amqplain_responses_are_read() {
        assert_eq!(
            parse_response("PLAIN", b"\0bob\0secret").unwrap(),
            Credentials {
                user: "bob".into(),
                password: "secret".into()
            }
        );
        // AMQPLAIN: 5"LOGIN" 'S' len "bob", 8"PASSWORD" 'S' len "secret"
        let mut r = vec![5];
        r.extend(b"LOGINS");
        r.extend(3u32.to_be_bytes());
        r.extend(b"bob");
        r.push(8);
        r.extend(b"PASSWORDS");
        r.extend(6u32.to_be_bytes());
        r.extend(b"secret");
        assert_eq!(parse_response("AMQPLAIN", &r).unwrap().user, "bob");
        assert!(matches!(
            parse_response("EXTERNAL", b""),
            Err(AuthError::UnknownMechanism(_))
        ));
    }

    #[test]
    fn guest_may_log_in_only_from_loopback() {
        let users = Users::new(None);
        let guest = Credentials {
            user: "guest".into(),
            password: "guest".into(),
        };
        assert!(users.check(&guest, "127.0.0.1".parse().unwrap()).is_ok());
        assert!(users.check(&guest, "::1".parse().unwrap()).is_ok());
        assert!(users.check(&guest, "10.1.2.3".parse().unwrap()).is_err());
        let wrong = Credentials {
            user: "guest".into(),
            password: "nope".into(),
        };
        assert!(users.check(&wrong, "127.0.0.1".parse().unwrap()).is_err());
    }
}
