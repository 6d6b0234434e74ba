//! Who may talk to a node: the handshake proves knowledge of the shared cluster secret without
//! sending it. The server sends a fresh random nonce; the client answers with
//! HMAC-SHA256(secret, "raftmq-cluster-v1" | from | to | nonce). A replayed proof is useless
//! (the nonce differs every time), and the check is constant-time.

use super::wire::Hello;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const CONTEXT: &[u8] = b"raftmq-cluster-v1";

/// A fresh nonce from the operating system's random source.
pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).expect("the operating system's random source works");
    n
}

fn keyed(secret: &[u8], hello: &Hello, nonce: &[u8; 32]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(CONTEXT);
    mac.update(&hello.from.to_be_bytes());
    mac.update(&hello.to.to_be_bytes());
    mac.update(nonce);
    mac
}

/// The client's proof for this handshake.
pub fn prove(secret: &[u8], hello: &Hello, nonce: &[u8; 32]) -> Vec<u8> {
    keyed(secret, hello, nonce).finalize().into_bytes().to_vec()
}

/// Whether `proof` was made with `secret` for this handshake.
pub fn verify(secret: &[u8], hello: &Hello, nonce: &[u8; 32], proof: &[u8]) -> bool {
    keyed(secret, hello, nonce).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_and_handshake_verify() {
        let hello = Hello {
            from: 1,
            to: 2,
            zone: "az-a".into(),
        };
        let n = nonce();
        let proof = prove(b"s3cret", &hello, &n);
        assert!(verify(b"s3cret", &hello, &n, &proof));
        assert!(!verify(b"other", &hello, &n, &proof));
        assert!(!verify(b"s3cret", &hello, &nonce(), &proof));
        let swapped = Hello {
            from: 2,
            to: 1,
            ..hello.clone()
        };
        assert!(!verify(b"s3cret", &swapped, &n, &proof));
    }
}
