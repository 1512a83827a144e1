//! The heartbeat datagram: a route agent's beat as one UDP datagram instead of an HTTP/2 message.
//!
//! Why: at 5,000 nodes beating every 750 ms IPAM takes 6,667 beats a second. On the Heartbeat
//! stream each costs a TLS record, an HTTP/2 DATA frame and two task wake-ups — 18 % of a core
//! (README, scale). A datagram costs one `recvfrom` and one HMAC. It is what BFD (RFC 5880) does
//! for the same reason: liveness on UDP, authenticated, with sequence numbers against replay.
//!
//! Contract: IPAM offers a *session* on a node's Heartbeat stream once it has taken the stream's
//! first beat (ipam.proto, `HeartbeatResponse.datagrams`): an id and a 32-byte key, sent over that
//! stream — over mutual TLS when the service uses it, so only the node's agent knows the key. A
//! datagram renews the node's lease only when its tag is the HMAC-SHA256 of its header under the
//! session's key and its sequence is above every sequence taken before in the session (a replayed
//! or reordered old beat says nothing about now: refused, as RFC 5880 §6.7.3's meticulous mode).
//! IPAM never answers a datagram: nothing to amplify, nothing to reflect.
//!
//! Layout, 36 bytes, big-endian:
//!
//! | bytes  | field                                             |
//! |--------|---------------------------------------------------|
//! | 0..4   | magic `RPB1` (the format's version)               |
//! | 4..12  | session id                                        |
//! | 12..20 | sequence, strictly increasing within the session  |
//! | 20..36 | HMAC-SHA256(key, bytes 0..20), its first 16 bytes |

use ring::hmac;

/// Every datagram's length: anything else is refused unread.
pub const LEN: usize = 36;
const MAGIC: [u8; 4] = *b"RPB1";
const HEADER: usize = 20;
/// RFC 2104 §5 allows truncating the tag to half the hash (and no less than 80 bits): 128 bits.
const TAG: usize = LEN - HEADER;
/// The key's length: SHA-256's output, as RFC 2104 §3 recommends at least.
pub const KEY_LEN: usize = 32;

/// A session's key; its bytes never appear in `Debug`.
#[derive(Clone)]
pub struct SessionKey(hmac::Key);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("a heartbeat datagram is {LEN} bytes starting RPB1")]
    Malformed,
    #[error("no open Heartbeat stream holds this session")]
    UnknownSession,
    #[error("the tag is not the session key's")]
    BadTag,
    #[error("the sequence is not above the last one taken (a replay, or an old beat)")]
    Replayed,
}

impl Refused {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::UnknownSession => "unknown_session",
            Refused::BadTag => "bad_tag",
            Refused::Replayed => "replayed",
        }
    }
}

impl SessionKey {
    /// A key from its bytes, which must be [`KEY_LEN`] long (a key offered by a broken or hostile
    /// server is refused, not used short).
    pub fn from_bytes(bytes: &[u8]) -> Option<SessionKey> {
        (bytes.len() == KEY_LEN).then(|| SessionKey(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// A fresh random key, and its bytes to offer.
    pub fn generate() -> Result<(SessionKey, [u8; KEY_LEN]), ring::error::Unspecified> {
        let mut bytes = [0u8; KEY_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
        Ok((SessionKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)), bytes))
    }
}

/// A datagram's header, read before its tag is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub session: u64,
    pub sequence: u64,
}

impl Header {
    /// The datagram for this beat, tagged with `key`.
    pub fn seal(self, key: &SessionKey) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..12].copy_from_slice(&self.session.to_be_bytes());
        out[12..HEADER].copy_from_slice(&self.sequence.to_be_bytes());
        let tag = hmac::sign(&key.0, &out[..HEADER]);
        out[HEADER..].copy_from_slice(&tag.as_ref()[..TAG]);
        out
    }

    /// The header of `datagram`, unverified: the session it names says which key checks it.
    pub fn read(datagram: &[u8]) -> Result<Header, Refused> {
        if datagram.len() != LEN || datagram[..4] != MAGIC {
            return Err(Refused::Malformed);
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&datagram[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Header {
            session: word(4),
            sequence: word(12),
        })
    }
}

/// Whether `datagram` (already [`Header::read`]) carries `key`'s tag. Constant-time.
pub fn verify(datagram: &[u8], key: &SessionKey) -> Result<(), Refused> {
    if datagram.len() != LEN {
        return Err(Refused::Malformed);
    }
    let tag = hmac::sign(&key.0, &datagram[..HEADER]);
    // Every byte compared whatever the first difference (no timing to learn the tag from).
    let differ = tag.as_ref()[..TAG]
        .iter()
        .zip(&datagram[HEADER..])
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if differ == 0 {
        Ok(())
    } else {
        Err(Refused::BadTag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey::generate().expect("random key").0
    }

    #[test]
    fn a_sealed_datagram_reads_back_and_verifies() {
        let k = key();
        let h = Header {
            session: 0x0102_0304_0506_0708,
            sequence: 42,
        };
        let d = h.seal(&k);
        assert_eq!(Header::read(&d), Ok(h));
        assert_eq!(verify(&d, &k), Ok(()));
    }

    #[test]
    fn any_flipped_bit_or_another_key_is_refused() {
        let k = key();
        let d = Header {
            session: 7,
            sequence: 9,
        }
        .seal(&k);
        for byte in 4..LEN {
            for bit in 0..8 {
                let mut bad = d;
                bad[byte] ^= 1 << bit;
                assert_eq!(
                    verify(&bad, &k),
                    Err(Refused::BadTag),
                    "byte {byte} bit {bit}"
                );
            }
        }
        assert_eq!(
            verify(&d, &key()),
            Err(Refused::BadTag),
            "another session's key"
        );
    }

    #[test]
    fn wrong_lengths_and_magic_are_malformed() {
        let d = Header {
            session: 1,
            sequence: 1,
        }
        .seal(&key());
        assert_eq!(Header::read(&d[..LEN - 1]), Err(Refused::Malformed));
        assert_eq!(
            Header::read(&[d.as_slice(), &[0]].concat()),
            Err(Refused::Malformed)
        );
        assert_eq!(Header::read(&[]), Err(Refused::Malformed));
        let mut other = d;
        other[3] = b'2';
        assert_eq!(Header::read(&other), Err(Refused::Malformed), "RPB2");
        assert_eq!(verify(&d[..10], &key()), Err(Refused::Malformed));
    }

    #[test]
    fn keys_of_the_wrong_length_are_refused() {
        assert!(SessionKey::from_bytes(&[0; KEY_LEN]).is_some());
        assert!(SessionKey::from_bytes(&[0; KEY_LEN - 1]).is_none());
        assert!(SessionKey::from_bytes(&[]).is_none());
        let (k, bytes) = SessionKey::generate().expect("random key");
        let d = Header {
            session: 3,
            sequence: 4,
        }
        .seal(&k);
        let again = SessionKey::from_bytes(&bytes).expect("its own bytes");
        assert_eq!(
            verify(&d, &again),
            Ok(()),
            "the offered bytes make the same key"
        );
        assert_eq!(format!("{k:?}"), "SessionKey(..)", "the key is not logged");
    }
}
