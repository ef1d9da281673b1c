//! Live fan-out: committed run progress for `runs watch`, committed events for `tail` followers. Each
//! subscriber has its own bounded buffer; a slow one is told it lagged and never slows ingest.

use std::collections::BTreeSet;
use std::sync::Arc;

use polarizer_shared::events::EventRow;
use polarizer_shared::run::{RunUpdate, SuiteRef};
use tokio::sync::broadcast;

use crate::store::runs::Effect;

/// Run updates buffered per watcher.
const UPDATES_PER_WATCHER: usize = 4096;
/// Events buffered per follower.
const EVENTS_PER_FOLLOWER: usize = 65_536;

pub struct FanOut {
    /// Run progress, after it is committed.
    pub updates: broadcast::Sender<RunUpdate>,
    /// Every stored event, after it is committed (published from the store's writer, in commit order).
    pub events: broadcast::Sender<Arc<EventRow>>,
}

impl Default for FanOut {
    fn default() -> Self {
        FanOut {
            updates: broadcast::channel(UPDATES_PER_WATCHER).0,
            events: broadcast::channel(EVENTS_PER_FOLLOWER).0,
        }
    }
}

impl FanOut {
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
