//! MessagePack codec for internal messages.
//!
//! Messages are encoded as named maps (`rmp_serde::to_vec_named`) so a reader built
//! before a field was added still decodes them. Every message carries a `v` field; a
//! reader refuses a version newer than [`crate::WIRE_VERSION`].

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A message that carries the wire version.
pub trait Versioned {
    fn version(&self) -> u16;
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    #[error("message version {found} is newer than this build understands ({supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
}

/// Encodes a message. Serialising our own types into a `Vec` cannot fail, so this
/// returns bytes directly.
pub fn encode<T: Serialize>(msg: &T) -> bytes::Bytes {
    rmp_serde::to_vec_named(msg)
        .expect("wire types always serialise")
        .into()
}

/// Decodes a message and checks its version.
pub fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let msg: T = rmp_serde::from_slice(bytes)?;
    if msg.version() > crate::WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: msg.version(),
            supported: crate::WIRE_VERSION,
        });
    }
    Ok(msg)
}

pub(crate) fn current_version() -> u16 {
    crate::WIRE_VERSION
}

macro_rules! versioned {
    ($($t:ty),*) => {
        $(impl $crate::codec::Versioned for $t {
            fn version(&self) -> u16 { self.v }
        })*
    };
}
pub(crate) use versioned;
