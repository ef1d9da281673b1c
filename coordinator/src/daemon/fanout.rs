//! Live fan-out: committed run progress for `runs watch`, committed events for `tail` followers. One
//! bounded ring per kind, shared by every subscriber, bounded in bytes as well as in rows: an event too
//! large to hold there is announced by its id, and a follower reads it from the store. A slow subscriber
//! is told it lagged and never slows ingest; what it holds in memory stays within the ring.

use std::collections::BTreeSet;
use std::sync::Arc;

use polarizer_shared::events::EventRow;
use polarizer_shared::run::{RunUpdate, SuiteRef};
use tokio::sync::broadcast;

use crate::store::runs::Effect;

/// Run updates held for watchers.
const LIVE_UPDATES: usize = 4096;
/// Events held for followers, however many follow: the newest this many (a slow follower keeps older
/// ones from being freed until they are overwritten).
pub const LIVE_EVENTS: usize = 16_384;
/// The largest event held in the ring (by [`EventRow::approximate_bytes`]); a larger one is announced
/// by its id. With [`LIVE_EVENTS`], the ring holds at most about 36 MiB.
pub const LIVE_EVENT_MAX_BYTES: usize = 2048;

/// A committed event in the ring. Its JSON (as `tail --json` and the API's WebSockets send it) is
/// written once, by the first follower that needs it, and shared by every other.
#[derive(Debug)]
pub struct LiveRow {
    row: EventRow,
    json: std::sync::OnceLock<Box<str>>,
}

impl LiveRow {
    pub fn new(row: EventRow) -> LiveRow {
        LiveRow {
            row,
            json: std::sync::OnceLock::new(),
        }
    }

    pub fn row(&self) -> &EventRow {
        &self.row
    }

    /// The event as `tail --json` prints it.
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| crate::core::views::event_json(&self.row).to_string().into())
    }
}

/// A committed event as followers receive it.
#[derive(Clone, Debug)]
pub enum LiveEvent {
    Event(Arc<LiveRow>),
    /// Committed, but too large for the ring: read it from the store.
    Stored {
        id: u64,
    },
}

impl LiveEvent {
    /// What the ring holds for `event`.
    pub fn of(event: EventRow) -> LiveEvent {
        if event.approximate_bytes() > LIVE_EVENT_MAX_BYTES {
            LiveEvent::Stored { id: event.id }
        } else {
            LiveEvent::Event(Arc::new(LiveRow::new(event)))
        }
    }

    pub fn id(&self) -> u64 {
        match self {
            LiveEvent::Event(event) => event.row.id,
            LiveEvent::Stored { id } => *id,
        }
    }
}

pub struct FanOut {
    /// Run progress, after it is committed.
    pub updates: broadcast::Sender<RunUpdate>,
    /// Every stored event, after it is committed (published from the store's writer, in commit order).
    pub events: broadcast::Sender<LiveEvent>,
}

impl Default for FanOut {
    fn default() -> Self {
        FanOut::with_capacity(LIVE_UPDATES, LIVE_EVENTS)
    }
}

impl FanOut {
    /// Rings of these sizes (tests use small ones).
    pub fn with_capacity(updates: usize, events: usize) -> FanOut {
        FanOut {
            updates: broadcast::channel(updates).0,
            events: broadcast::channel(events).0,
        }
    }

    /// Sends run updates to watchers. Returns the attempts the sending agent no longer holds (each
    /// once), and whether the scheduler should look again (an update may free or need an agent).
    pub fn publish(&self, effects: Vec<Effect>) -> (BTreeSet<SuiteRef>, bool) {
        let mut wake = false;
        let mut stale = BTreeSet::new();
        for effect in effects {
            match effect {
                Effect::Update(update) => {
                    wake |= !matches!(
                        update,
                        RunUpdate::Output { .. } | RunUpdate::TestStarted { .. }
                    );
                    let _ = self.updates.send(update);
                }
                // Already published by the store's writer, in commit order.
                Effect::Event(_) => {}
                Effect::Stale(suite) => {
                    stale.insert(suite);
                }
            }
        }
        (stale, wake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, data_bytes: usize) -> EventRow {
        EventRow {
            id,
            agent: "vm-1".into(),
            kind: "flood".into(),
            data: "x".repeat(data_bytes),
            ..EventRow::default()
        }
    }

    /// A follower that never reads holds no more than the ring: older events are freed as new ones
    /// come (with an unbounded queue every one would still be alive), and it is told how many it missed.
    #[test]
    fn a_follower_that_never_reads_pins_at_most_the_ring_and_is_told_it_lagged() {
        let fanout = FanOut::default();
        let mut stuck = fanout.events.subscribe();
        let published = LIVE_EVENTS + 5_000;
        let mut alive = Vec::new();
        for id in 1..=published as u64 {
            let live = LiveEvent::of(event(id, 100));
            if let LiveEvent::Event(event) = &live {
                alive.push(Arc::downgrade(event));
            }
            fanout.events.send(live).unwrap();
        }
        let held = alive
            .iter()
            .filter(|event| event.strong_count() > 0)
            .count();
        assert_eq!(held, LIVE_EVENTS);
        assert!(matches!(
            stuck.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(missed)) if missed == 5_000
        ));
        // Then it goes on from the oldest event still held.
        assert_eq!(stuck.try_recv().unwrap().id(), 5_001);
    }

    /// The ring's bytes are bounded too: an event larger than an entry may be is announced by id only.
    #[test]
    fn an_event_too_large_for_the_ring_is_announced_by_its_id() {
        assert!(matches!(
            LiveEvent::of(event(7, LIVE_EVENT_MAX_BYTES)),
            LiveEvent::Stored { id: 7 }
        ));
        assert!(matches!(LiveEvent::of(event(8, 1000)), LiveEvent::Event(_)));
    }
}
