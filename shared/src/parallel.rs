//! Data parallelism without a pool: `f` over a slice on scoped threads, one contiguous chunk per core;
//! and freeing large values off the caller's thread.

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
    if parts.len() == 1 {
        return parts.into_iter().flatten().collect();
    }
    let mut all = Vec::with_capacity(items.len());
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
