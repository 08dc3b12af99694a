//! Every ring's `user_data`, in one place. The top byte is a tag naming whose operation
//! completed and what it was; bits 32..56 carry a connection generation and bits 0..32 an
//! index (a slab slot, a listener, an accept slot, a loop). The loops, the ingest thread
//! and the drivers draw their tags from disjoint ranges, so a completion names its owner
//! wherever it lands.

/// The generation bits: 24, enough that a stale completion's slot has been reused with a
/// different generation long before it wraps.
pub const GENERATION_MASK: u32 = (1 << 24) - 1;

/// Packs a tag, a generation and an index into a completion's `user_data`.
pub const fn pack(tag: u8, generation: u32, index: u32) -> u64 {
    ((tag as u64) << 56) | (((generation & GENERATION_MASK) as u64) << 32) | index as u64
}

/// The tag, generation and index [`pack`] packed.
pub const fn unpack(data: u64) -> (u8, u32, u32) {
    (
        (data >> 56) as u8,
        ((data >> 32) as u32) & GENERATION_MASK,
        data as u32,
    )
}

/// A loop's operations (`crate::shard`): the index is a slab slot, a listener or 0.
pub mod shard {
    /// Accept: the generation field is the accept slot, the index the listener.
    pub const ACCEPT: u8 = 0x01;
    pub const RECV: u8 = 0x02;
    pub const SEND: u8 = 0x03;
    pub const CLOSE: u8 = 0x04;
    pub const CANCEL: u8 = 0x05;
    pub const SHUTDOWN: u8 = 0x06;
    pub const TICK: u8 = 0x07;
    /// A doorbell from the ingest or backplane thread: the broadcast ring has news.
    pub const DOORBELL: u8 = 0x08;
    /// A parked connection's poll: its input is readable again.
    pub const POLL: u8 = 0x09;
    /// The cancel that parks an idle connection's receive.
    pub const PARK: u8 = 0x0a;
}

/// The ingest thread's operations (`crate::ingest`): the index is a publisher's slot or
/// a loop.
pub mod ingest {
    pub const ACCEPT: u8 = 0x11;
    pub const RECV: u8 = 0x12;
    pub const SEND: u8 = 0x13;
    pub const TICK: u8 = 0x14;
    /// Completion of a doorbell this thread rang on a loop.
    pub const DOORBELL: u8 = 0x15;
    /// A loop's doorbell: client messages wait in its mailbox.
    pub const UPSTREAM_BELL: u8 = 0x16;
    /// The backplane thread's doorbell: stream events or acknowledgements wait.
    pub const BACKPLANE_BELL: u8 = 0x17;
    /// A loop's doorbell: it reached the mark the ingest thread waits for (`--ingest-flow lag`).
    pub const FLOW_BELL: u8 = 0x18;
}

/// The drivers' own operations, never handed to a loop as they are (0xf0 and above).
pub mod driver {
    /// An accept the driver multiplexes: the index is `listener * slots + slot`.
    pub const ACCEPT: u8 = 0xf1;
    /// The loop's tick, a multishot timeout.
    pub const TICK: u8 = 0xf2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_disjoint_and_ranges_hold() {
        let shard = [
            shard::ACCEPT,
            shard::RECV,
            shard::SEND,
            shard::CLOSE,
            shard::CANCEL,
            shard::SHUTDOWN,
            shard::TICK,
            shard::DOORBELL,
            shard::POLL,
            shard::PARK,
        ];
        let ingest = [
            ingest::ACCEPT,
            ingest::RECV,
            ingest::SEND,
            ingest::TICK,
            ingest::DOORBELL,
            ingest::UPSTREAM_BELL,
            ingest::BACKPLANE_BELL,
            ingest::FLOW_BELL,
        ];
        let driver = [driver::ACCEPT, driver::TICK];
        let all: Vec<u8> = shard.iter().chain(&ingest).chain(&driver).copied().collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "a tag is used twice: {all:x?}");
        assert!(shard.iter().all(|t| (0x01..0x10).contains(t)));
        assert!(ingest.iter().all(|t| (0x10..0x20).contains(t)));
        assert!(driver.iter().all(|&t| t >= 0xf0));
    }

    #[test]
    fn pack_round_trips_and_masks_the_generation() {
        assert_eq!(
            unpack(pack(shard::SEND, 0x00ab_cdef, 7)),
            (shard::SEND, 0x00ab_cdef, 7)
        );
        assert_eq!(
            unpack(pack(ingest::RECV, 0xff00_0001, u32::MAX)),
            (ingest::RECV, 1, u32::MAX)
        );
    }
}
