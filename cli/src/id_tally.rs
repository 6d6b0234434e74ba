//! Which message ids `raftmq bench` saw, as dense per-producer tables rather than hash maps.
//!
//! Ids are (producer, sequence) with sequences counting up from 1, so a table indexed by the
//! sequence holds them with no hashing. A hash map of every id also rehashed its whole content
//! whenever it doubled, inside the client's consumer or confirm path: a stall of milliseconds
//! at a few hundred thousand ids that showed up in the end-to-end latency being measured.

/// How many times each (slot, producer, sequence) was recorded; a slot is a queue for
/// deliveries, and the single slot 0 for confirms. Counts saturate at 255.
#[derive(Default)]
pub(crate) struct IdTally {
    /// slot -> producer -> sequence -> count.
    slots: Vec<Vec<Vec<u8>>>,
}

impl IdTally {
    pub(crate) fn record(&mut self, slot: usize, producer: usize, seq: u64) {
        let counts = Self::entry(&mut self.slots, slot, producer);
        let seq = seq as usize;
        if counts.len() <= seq {
            counts.resize((seq + 1).max(counts.len() * 2), 0);
        }
        counts[seq] = counts[seq].saturating_add(1);
    }

    pub(crate) fn count(&self, slot: usize, producer: usize, seq: u64) -> u8 {
        self.slots
            .get(slot)
            .and_then(|p| p.get(producer))
            .and_then(|c| c.get(seq as usize))
            .copied()
            .unwrap_or(0)
    }

    /// Every recorded (slot, producer, sequence, count).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, usize, u64, u8)> + '_ {
        self.slots.iter().enumerate().flat_map(|(slot, producers)| {
            producers
                .iter()
                .enumerate()
                .flat_map(move |(producer, counts)| {
                    counts
                        .iter()
                        .enumerate()
                        .filter(|(_, n)| **n > 0)
                        .map(move |(seq, n)| (slot, producer, seq as u64, *n))
                })
        })
    }

    fn entry(slots: &mut Vec<Vec<Vec<u8>>>, slot: usize, producer: usize) -> &mut Vec<u8> {
        if slots.len() <= slot {
            slots.resize_with(slot + 1, Vec::new);
        }
        let producers = &mut slots[slot];
        if producers.len() <= producer {
            producers.resize_with(producer + 1, Vec::new);
        }
        &mut producers[producer]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ids_per_slot_and_producer() {
        let mut t = IdTally::default();
        t.record(0, 2, 5);
        t.record(0, 2, 5);
        t.record(1, 0, 1);
        t.record(1, 0, 100_000);
        assert_eq!(t.count(0, 2, 5), 2);
        assert_eq!(t.count(0, 2, 4), 0);
        assert_eq!(t.count(1, 0, 1), 1);
        assert_eq!(
            t.count(7, 9, 1),
            0,
            "an unknown slot or producer counts nothing"
        );
        let all: Vec<_> = t.iter().collect();
        assert_eq!(all, vec![(0, 2, 5, 2), (1, 0, 1, 1), (1, 0, 100_000, 1)]);
    }

    #[test]
    fn counts_saturate() {
        let mut t = IdTally::default();
        for _ in 0..300 {
            t.record(0, 0, 1);
        }
        assert_eq!(t.count(0, 0, 1), 255);
    }
}
