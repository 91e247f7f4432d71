//! Keyed tags of example ids: HMAC-SHA-256 under a key from the connection's
//! TLS exporter (RFC 8446 section 7.5), truncated to 128 bits. Only the two
//! enclaves at the ends of that one connection can compute them; a new
//! connection gives new tags, so a join runs on one connection.

use ring::hmac;

/// The exporter label of the tag key.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-vfl-join-v1 tag key";

/// Bytes per tag.
pub const TAG_LEN: usize = 16;

/// A tag: what the peer sees of one example id.
pub type Tag = [u8; TAG_LEN];

/// The keys of one join: the tag key, and the key of the joined-order
/// digest (so that the digest, which the reports show, cannot be checked
/// against guessed ids outside the enclaves).
pub struct TagKey {
    tags: hmac::Key,
    digest: hmac::Key,
}

impl TagKey {
    /// The keys from 32 bytes of exporter output (HMAC-SHA-256 of a label
    /// under it, one per key).
    pub fn new(secret: &[u8; 32]) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive = |label: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&root, label).as_ref());
        TagKey {
            tags: derive(b"vfl-join tags"),
            digest: derive(b"vfl-join digest"),
        }
    }

    /// A MAC over the joined ids, keyed for this join.
    pub fn digest(&self) -> hmac::Context {
        hmac::Context::with_key(&self.digest)
    }

    /// The key of a TLS 1.3 connection (both ends derive the same).
    pub fn from_connection<D>(conn: &rustls::ConnectionCommon<D>) -> Result<Self, rustls::Error> {
        let secret = conn.export_keying_material([0u8; 32], EXPORTER_LABEL, None)?;
        Ok(TagKey::new(&secret))
    }

    /// The tag of `id`.
    pub fn tag(&self, id: &[u8]) -> Tag {
        let mac = hmac::sign(&self.tags, id);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&mac.as_ref()[..TAG_LEN]);
        t
    }
}

impl std::fmt::Debug for TagKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TagKey(..)")
    }
}

/// The partition of `tag` among `2^bits` (its first `bits` bits), so that
/// partition order is tag order.
pub fn partition(tag: &Tag, bits: u32) -> u32 {
    if bits == 0 {
        return 0;
    }
    u32::from_be_bytes([tag[0], tag[1], tag[2], tag[3]]) >> (32 - bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_depend_on_key_and_id_only() {
        let (a, b) = (TagKey::new(&[1; 32]), TagKey::new(&[2; 32]));
        assert_eq!(a.tag(b"42"), a.tag(b"42"));
        assert_ne!(a.tag(b"42"), a.tag(b"43"));
        assert_ne!(a.tag(b"42"), b.tag(b"42"));
    }

    #[test]
    fn partitions_follow_tag_order() {
        let key = TagKey::new(&[3; 32]);
        let mut tags: Vec<Tag> = (0..1000u32).map(|i| key.tag(&i.to_le_bytes())).collect();
        tags.sort();
        for bits in [0, 1, 4, 14] {
            let parts: Vec<u32> = tags.iter().map(|t| partition(t, bits)).collect();
            assert!(parts.windows(2).all(|w| w[0] <= w[1]), "bits {bits}");
            assert!(parts.iter().all(|&p| p < 1 << bits));
        }
    }
}
