//! Data parallelism on rayon's global pool: `f` over a slice in order, over one contiguous chunk per pool
//! thread, or item by item while the caller consumes the results as they arrive; and freeing large values
//! off the caller's thread.

use std::sync::{mpsc, Mutex, PoisonError};

use rayon::prelude::*;

/// Under this many items [`parallel_chunks`] makes one chunk, on the calling thread: every chunk costs
/// its caller a merge, which a few hundred cheap items do not pay back.
const ONE_CHUNK_BELOW: usize = 512;

/// `f` over `items`, in order, on rayon's pool.
pub fn parallel_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    items.par_iter().map(&f).collect()
}

/// [`parallel_map`] where each piece of the work keeps scratch state of its own, made by `init` (a
/// cache, say). rayon decides the pieces: `init` runs at least once per thread that takes part, and
/// again for each piece a thread steals.
pub fn parallel_map_with<T: Sync, U: Send, S>(
    items: &[T],
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> U + Sync,
) -> Vec<U> {
    // By reference: rayon wants closures that are `Send` too, and a reference to a `Sync` one is.
    let (init, f) = (&init, &f);
    items
        .par_iter()
        .map_init(init, |state, item| f(state, item))
        .collect()
}

/// `f` over contiguous chunks of `items`, one per thread of rayon's pool, in order; `f` also gets where
/// its chunk starts. Under 512 items (or with a pool of one thread) there is one chunk, on the calling
/// thread. For work that gathers something per chunk (a map, say) and merges afterwards.
pub fn parallel_chunks<T: Sync, U: Send>(
    items: &[T],
    f: impl Fn(usize, &[T]) -> U + Sync,
) -> Vec<U> {
    let threads = rayon::current_num_threads();
    if threads < 2 || items.len() < ONE_CHUNK_BELOW {
        return vec![f(0, items)];
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    items
        .par_chunks(chunk)
        .enumerate()
        .map(|(index, part)| f(index * chunk, part))
        .collect()
}

/// `f` over `items` on every thread of rayon's pool but one, while `consume` runs on the calling thread
/// and takes each result through [`Arrivals`]. The pool's threads take items in order, ahead of a
/// consumer going through them in order; an item none has taken yet the consumer works out itself, and
/// while one a thread is on is not there yet, it works out the next ones meanwhile, so it waits only at
/// the very end. Once `consume` returns, the threads stop after their current item and results not
/// taken are dropped. With a pool of one thread, `consume` works out each item itself as it takes it.
pub fn map_while_consuming<T: Sync, U: Send, R>(
    items: &[T],
    f: impl Fn(&T) -> U + Sync,
    consume: impl FnOnce(&mut Arrivals<'_, T, U>) -> R,
) -> R {
    let taken = vec![false; items.len()];
    // The consumer works too: with it, as many threads as the pool has (by default one per core).
    let helpers = (rayon::current_num_threads() - 1).min(items.len().saturating_sub(1));
    if helpers == 0 {
        return consume(&mut Arrivals {
            items,
            f: &f,
            shared: None,
            early: Default::default(),
            taken,
        });
    }
    let f = &f;
    let unstarted = Mutex::new(items.iter().enumerate());
    rayon::in_place_scope(|scope| {
        let (results_tx, results_rx) = mpsc::channel();
        for _ in 0..helpers {
            let (results_tx, unstarted) = (results_tx.clone(), &unstarted);
            scope.spawn(move |_| {
                // A send fails once the consumer has returned and dropped the receiver.
                while let Some((index, item)) = next_unstarted(unstarted) {
                    if results_tx.send((index, f(item))).is_err() {
                        break;
                    }
                }
            });
        }
        // Only the helpers' senders are left: the channel closes when the last of them ends.
        drop(results_tx);
        let mut arrivals = Arrivals {
            items,
            f,
            shared: Some(Shared {
                results_rx,
                unstarted: &unstarted,
            }),
            early: Default::default(),
            taken,
        };
        consume(&mut arrivals)
        // `arrivals` (the receiver) is dropped here, before the scope waits for its threads.
    })
}

type Unstarted<'a, T> = Mutex<std::iter::Enumerate<std::slice::Iter<'a, T>>>;

/// The next item no thread has started on, with its index; `None` once every item is started.
fn next_unstarted<'a, T>(unstarted: &Unstarted<'a, T>) -> Option<(usize, &'a T)> {
    // Taking an item from a slice iterator cannot panic: a poisoned lock still holds a sound iterator.
    unstarted
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .next()
}

/// What the consumer shares with the helper threads of [`map_while_consuming`].
struct Shared<'a, T, U> {
    /// The helpers' results, in about the items' order.
    results_rx: mpsc::Receiver<(usize, U)>,
    unstarted: &'a Unstarted<'a, T>,
}

/// The results of [`map_while_consuming`], by item index.
pub struct Arrivals<'a, T, U> {
    items: &'a [T],
    f: &'a (dyn Fn(&T) -> U + Sync),
    /// `None` without helper threads: each item is worked out as it is taken.
    shared: Option<Shared<'a, T, U>>,
    /// Results that arrived, or that the consumer worked out, before they were asked for.
    early: foldhash::HashMap<usize, U>,
    taken: Vec<bool>,
}

impl<T, U> Arrivals<'_, T, U> {
    /// Item `index`'s result: worked out here if no thread has started on it (with those before it that
    /// none has started either, kept for later), else waited for, working out the items no thread has
    /// started meanwhile. `None` if it was taken already, is past the end, or the thread working it out
    /// panicked (the panic surfaces when `consume` returns).
    pub fn take(&mut self, index: usize) -> Option<U> {
        let item = self.items.get(index)?;
        if std::mem::replace(&mut self.taken[index], true) {
            return None;
        }
        let Some(shared) = &self.shared else {
            return Some((self.f)(item));
        };
        loop {
            if let Some(result) = self.early.remove(&index) {
                return Some(result);
            }
            while let Ok((arrived, result)) = shared.results_rx.try_recv() {
                self.early.insert(arrived, result);
            }
            if self.early.contains_key(&index) {
                continue;
            }
            // Not there yet: the next item no thread has started (perhaps this one), else wait.
            let Some((next, next_item)) = next_unstarted(shared.unstarted) else {
                break;
            };
            let result = (self.f)(next_item);
            if next == index {
                return Some(result);
            }
            self.early.insert(next, result);
        }
        // Every item is started and this one is on a helper thread. The channel closes when the helpers
        // end; an item whose thread panicked never comes.
        for (arrived, result) in shared.results_rx.iter() {
            if arrived == index {
                return Some(result);
            }
            self.early.insert(arrived, result);
        }
        None
    }
}

/// Drops `value` on rayon's pool: freeing a large tree of small allocations takes a few hundred
/// milliseconds that the caller need not wait for. One pool thread is busy with it meanwhile.
pub fn drop_elsewhere<T: Send + 'static>(value: T) {
    rayon::spawn(move || drop(value));
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

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
    fn a_consumer_on_a_pool_thread_gets_every_result() {
        // Inside a pool of one thread there is none to spare: the consumer works out every item.
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let items: Vec<usize> = (0..1_000).collect();
            let taken = pool.install(|| {
                map_while_consuming(
                    &items,
                    |item| item + 1,
                    |arrivals| {
                        (0..items.len())
                            .map(|index| arrivals.take(index))
                            .collect::<Vec<_>>()
                    },
                )
            });
            let expected: Vec<Option<usize>> = items.iter().map(|item| Some(item + 1)).collect();
            assert_eq!(taken, expected, "{threads} threads");
        }
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
