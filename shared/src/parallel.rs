//! Data parallelism without a pool: `f` over a slice on scoped threads, one contiguous chunk per core, or
//! item by item while the caller consumes the results; and freeing large values off the caller's thread.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// `f` over `items`, in order, split over the available cores (at most 8). Small inputs stay on the
/// calling thread: a thread costs more than a few hundred cheap items.
pub fn parallel_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    parallel_map_with(items, || (), |_, item| f(item))
}

/// [`parallel_map`] where each thread keeps scratch state of its own, made by `init` (a cache, say).
pub fn parallel_map_with<T: Sync, U: Send, S>(
    items: &[T],
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> U + Sync,
) -> Vec<U> {
    let parts = parallel_chunks(items, |_, part| {
        let mut state = init();
        part.iter()
            .map(|item| f(&mut state, item))
            .collect::<Vec<U>>()
    });
    // The first part grows into the whole (a large allocation grows in place or by remapping pages):
    // only the others are copied.
    let mut parts = parts.into_iter();
    let mut all = parts.next().unwrap_or_default();
    all.reserve_exact(items.len() - all.len());
    for part in parts {
        all.extend(part);
    }
    all
}

/// `f` over contiguous chunks of `items`, one per core (at most 8), in order; `f` also gets where its
/// chunk starts. Under 512 items there is one chunk, on the calling thread. For work that gathers
/// something per chunk (a map, say) and merges afterwards.
pub fn parallel_chunks<T: Sync, U: Send>(
    items: &[T],
    f: impl Fn(usize, &[T]) -> U + Sync,
) -> Vec<U> {
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(8);
    if threads < 2 || items.len() < 512 {
        return vec![f(0, items)];
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let f = &f;
        let workers: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(index, part)| scope.spawn(move || f(index * chunk, part)))
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// `f` over `items` on every core while `consume` runs on the calling thread and takes each result
/// through [`Arrivals`]. The other threads claim items in order, ahead of a consumer going through them
/// in order; an item none has claimed yet the consumer works out itself, so it waits only for an item
/// a thread is on at that moment. Once `consume` returns, the threads stop after their current item and
/// results not taken are dropped. With one core, `consume` does all the work itself.
pub fn map_while_consuming<T: Sync, U: Send, R>(
    items: &[T],
    f: impl Fn(&T) -> U + Sync,
    consume: impl FnOnce(&mut Arrivals<'_, T, U>) -> R,
) -> R {
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(8);
    let slots: Vec<Slot<U>> = (0..items.len()).map(|_| Slot::default()).collect();
    let (next, stop, helpers) = (
        AtomicUsize::new(0),
        AtomicBool::new(false),
        AtomicUsize::new(0),
    );
    std::thread::scope(|scope| {
        for _ in 1..threads.min(items.len()) {
            helpers.fetch_add(1, Ordering::SeqCst);
            let (slots, next, stop, helpers, f) = (&slots, &next, &stop, &helpers, &f);
            scope.spawn(move || {
                // Counted out even if `f` panics, so that the consumer stops waiting for it.
                let _leaving = Leaving(helpers);
                while !stop.load(Ordering::Relaxed) && work_ahead(items, f, slots, next) {}
            });
        }
        let mut arrivals = Arrivals {
            items,
            f: &f,
            slots: &slots,
            next: &next,
            helpers: &helpers,
        };
        let result = consume(&mut arrivals);
        stop.store(true, Ordering::Relaxed);
        result
    })
}

const UNCLAIMED: u8 = 0;
const WORKING: u8 = 1;
const READY: u8 = 2;
const TAKEN: u8 = 3;

/// One item's result in [`map_while_consuming`], and who has it.
struct Slot<U> {
    state: AtomicU8,
    value: Mutex<Option<U>>,
}

impl<U> Default for Slot<U> {
    fn default() -> Self {
        Slot {
            state: AtomicU8::new(UNCLAIMED),
            value: Mutex::new(None),
        }
    }
}

impl<U> Slot<U> {
    /// True for the one caller that gets to work out this item.
    fn claim(&self) -> bool {
        self.state
            .compare_exchange(UNCLAIMED, WORKING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Works out the next item no one has claimed, into its slot; false once there is none.
fn work_ahead<T, U>(
    items: &[T],
    f: &(dyn Fn(&T) -> U + Sync),
    slots: &[Slot<U>],
    next: &AtomicUsize,
) -> bool {
    let index = next.fetch_add(1, Ordering::Relaxed);
    let (Some(item), Some(slot)) = (items.get(index), slots.get(index)) else {
        return false;
    };
    if slot.claim() {
        let value = f(item);
        *slot.value.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        slot.state.store(READY, Ordering::Release);
    }
    true
}

/// Counts a helper thread out when it ends.
struct Leaving<'a>(&'a AtomicUsize);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The results of [`map_while_consuming`], by item index.
pub struct Arrivals<'a, T, U> {
    items: &'a [T],
    f: &'a (dyn Fn(&T) -> U + Sync),
    slots: &'a [Slot<U>],
    next: &'a AtomicUsize,
    helpers: &'a AtomicUsize,
}

impl<T, U> Arrivals<'_, T, U> {
    /// Item `index`'s result: worked out here if no thread has started on it, else waited for, working
    /// out items further on meanwhile. `None` if it was taken already, or its thread panicked.
    pub fn take(&mut self, index: usize) -> Option<U> {
        let slot = self.slots.get(index)?;
        if slot.claim() {
            slot.state.store(TAKEN, Ordering::Relaxed);
            return Some((self.f)(&self.items[index]));
        }
        loop {
            match slot.state.load(Ordering::Acquire) {
                READY => {
                    slot.state.store(TAKEN, Ordering::Relaxed);
                    return slot
                        .value
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                }
                TAKEN => return None,
                // A thread is on it: help with the items after it, or (none left) yield for the
                // rest of one item's work.
                _ if work_ahead(self.items, self.f, self.slots, self.next) => {}
                _ if self.helpers.load(Ordering::SeqCst) > 0 => std::thread::yield_now(),
                _ => {
                    // Its thread has ended without finishing it (it panicked).
                    return (slot.state.load(Ordering::Acquire) == READY)
                        .then(|| {
                            slot.value
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .take()
                        })
                        .flatten();
                }
            }
        }
    }
}

/// Drops `value` on a thread of its own: freeing a large tree of small allocations takes a few hundred
/// milliseconds that the caller need not wait for. Where no thread can start, it is dropped here.
pub fn drop_elsewhere<T: Send + 'static>(value: T) {
    let _ = std::thread::Builder::new()
        .name("drop".into())
        .spawn(move || drop(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_input_order() {
        for length in [0, 1, 511, 512, 10_001] {
            let items: Vec<usize> = (0..length).collect();
            let doubled = parallel_map(&items, |item| item * 2);
            assert_eq!(
                doubled,
                items.iter().map(|item| item * 2).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_consumer_takes_each_result_once_in_any_order() {
        for length in [0, 1, 2, 1_000] {
            let items: Vec<usize> = (0..length).collect();
            let taken = map_while_consuming(
                &items,
                |item| item * 3,
                |arrivals| {
                    // Backwards: against the threads' order, so some are waited for, some kept.
                    let taken: Vec<Option<usize>> = (0..length)
                        .rev()
                        .map(|index| arrivals.take(index))
                        .collect();
                    if length > 0 {
                        assert_eq!(arrivals.take(0), None, "taken twice");
                    }
                    assert_eq!(arrivals.take(length), None, "past the end");
                    taken
                },
            );
            let expected: Vec<Option<usize>> = (0..length).rev().map(|i| Some(i * 3)).collect();
            assert_eq!(taken, expected);
        }
    }

    #[test]
    fn the_threads_stop_once_the_consumer_returns() {
        let items: Vec<u64> = (0..100_000).collect();
        let calls = AtomicUsize::new(0);
        let first = map_while_consuming(
            &items,
            |item| {
                calls.fetch_add(1, Ordering::SeqCst);
                // Enough work that the threads are far from done when the consumer returns.
                (0..20_000u64).fold(*item, |sum, step| std::hint::black_box(sum ^ step))
            },
            |arrivals| arrivals.take(0),
        );
        assert_eq!(first, Some(0));
        let calls = calls.load(Ordering::SeqCst);
        assert!(calls < items.len() / 2, "{calls} items worked out");
    }

    #[test]
    fn chunks_cover_the_input_once_in_order_with_their_starts() {
        for length in [0, 1, 511, 512, 10_001] {
            let items: Vec<usize> = (0..length).collect();
            let parts = parallel_chunks(&items, |start, part| (start, part.to_vec()));
            let mut next = 0;
            for (start, part) in parts {
                assert_eq!(start, next);
                assert!(part.iter().enumerate().all(|(i, item)| *item == start + i));
                next += part.len();
            }
            assert_eq!(next, length);
        }
    }
}
