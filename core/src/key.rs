//! The coalescing and cache key.
//!
//! The caller computes the key (for an LLM: model, parameters and prompt, or a
//! digest of them). Two requests with equal keys are interchangeable: they share a
//! live flight and a cached result. The key is opaque bytes, cheap to clone.

use core::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// An opaque coalescing/cache key. Equal keys share work.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key(Bytes);

impl Key {
    /// A key from bytes.
    #[must_use]
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Key(bytes.into())
    }

    /// The key's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes in the key.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key has no bytes (such a key is rejected by `submit`).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Key {
    /// A key from a string literal, without copying it.
    #[must_use]
    pub const fn from_static(s: &'static str) -> Self {
        Key(Bytes::from_static(s.as_bytes()))
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&String> for Key {
    fn from(s: &String) -> Self {
        Key(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<&[u8]> for Key {
    fn from(b: &[u8]) -> Self {
        Key(Bytes::copy_from_slice(b))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key(Bytes::from(s))
    }
}

impl From<Vec<u8>> for Key {
    fn from(v: Vec<u8>) -> Self {
        Key(Bytes::from(v))
    }
}

impl From<Bytes> for Key {
    fn from(b: Bytes) -> Self {
        Key(b)
    }
}

impl From<u64> for Key {
    fn from(n: u64) -> Self {
        Key(Bytes::copy_from_slice(&n.to_be_bytes()))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(&self.0) {
            Ok(s) if s.chars().all(|c| !c.is_control()) => write!(f, "{s:?}"),
            _ => {
                f.write_str("0x")?;
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_borrowed_owned_and_static_text_are_equal() {
        let owned = String::from("model=x;prompt=hi");
        let borrowed: &str = owned.as_str();
        let from_borrowed = Key::from(borrowed);
        assert_eq!(from_borrowed, Key::from(owned.clone()));
        assert_eq!(from_borrowed, Key::from(&owned));
        assert_eq!(from_borrowed, Key::from(owned.as_bytes()));
        assert_eq!(from_borrowed, Key::from_static("model=x;prompt=hi"));
        assert_ne!(from_borrowed, Key::from("model=x;prompt=ho"));
        assert_eq!(from_borrowed.as_bytes(), b"model=x;prompt=hi");
    }
}
