//! Event ids the log generates. A client may give an event its own id (any
//! UUID; v7 keeps the idempotency index append-mostly), and those go into the
//! `event_ids` index. An event without one gets a UUIDv8 that carries this
//! log's tag and the event's position: the log finds such an event from its
//! id without an index entry: two B-tree inserts per event instead of three
//! (`docs/design.md#generated-ids`).
//!
//! Layout, most significant bits first: 48 bits of tag, the version nibble
//! `8`, 12 more bits of tag, the RFC 9562 variant `10`, 62 bits of position.

use uuid::Uuid;

/// Bits of the tag: 60, random per log.
const TAG_BITS: u32 = 60;
/// Bits of the position: 62.
const POSITION_MASK: u128 = (1 << 62) - 1;
const VERSION_8: u128 = 0x8 << 76;
const VARIANT_RFC: u128 = 0b10 << 62;
/// The bits that are fixed in every generated id: version and variant.
const FIXED_MASK: u128 = (0xf << 76) | (0b11 << 62);

/// The ids one log generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedIds {
    tag: u64,
}

impl GeneratedIds {
    /// The ids of the log whose tag is `tag` (only its low 60 bits count).
    pub fn new(tag: u64) -> Self {
        Self {
            tag: tag & ((1 << TAG_BITS) - 1),
        }
    }

    /// A new log's: a random tag.
    pub fn random() -> Self {
        Self::new(Uuid::new_v4().as_u128() as u64)
    }

    /// The tag, to be stored with the log.
    pub fn tag(self) -> u64 {
        self.tag
    }

    /// The id of the event at `position`.
    pub fn id(self, position: u64) -> Uuid {
        let tag = self.tag as u128;
        let high = (tag >> 12) << 80;
        let low = (tag & 0xfff) << 64;
        Uuid::from_u128(high | VERSION_8 | low | VARIANT_RFC | (position as u128 & POSITION_MASK))
    }

    /// The position `id` names, when it is an id of this log's form (whether
    /// an event has it yet is for the caller to check).
    pub fn position(self, id: Uuid) -> Option<u64> {
        let value = id.as_u128();
        if value & FIXED_MASK != VERSION_8 | VARIANT_RFC {
            return None;
        }
        let position = (value & POSITION_MASK) as u64;
        (self.id(position) == id).then_some(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_v8_uuids_that_give_back_their_position() {
        let ids = GeneratedIds::new(0x0abc_def0_1234_5678);
        for position in [1, 2, 17, 1 << 40, (1 << 62) - 1] {
            let id = ids.id(position);
            assert_eq!(id.get_version_num(), 8, "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(ids.position(id), Some(position), "{id}");
        }
        assert_ne!(ids.id(1), ids.id(2));
    }

    #[test]
    fn other_ids_are_not_taken_for_generated_ones() {
        let ids = GeneratedIds::new(42);
        let other_log = GeneratedIds::new(43);
        assert_eq!(ids.position(other_log.id(7)), None);
        assert_eq!(ids.position(Uuid::now_v7()), None);
        assert_eq!(ids.position(Uuid::new_v4()), None);
        assert_eq!(ids.position(Uuid::nil()), None);
        assert_eq!(GeneratedIds::new(ids.tag()), ids);
    }
}
