//! The instruments: counters, gauges and histograms that an observation changes with a few
//! atomic operations and no lock, and [`SeriesTable`], a lock-free, append-only table of
//! the series of one metric whose label values are only known at run time (HTTP routes).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds (seconds) for operations of microseconds to seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Bucket bounds (seconds) for HTTP requests: blocking queries wait up to ten minutes.
pub const HTTP_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Bucket bounds (seconds) for snapshots, which take milliseconds to minutes.
pub const SNAPSHOT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A distribution of non-negative observations (durations in seconds, sizes) over fixed
/// buckets, with their sum, the sum of their squares, the smallest and the largest, so that
/// both Prometheus's histogram and Consul's sample (mean, min, max, stddev) can be given.
///
/// An observation costs one atomic increment of its bucket, one compare-and-swap for each
/// of the two sums (uncontended, they succeed at once) and an atomic min and max.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is above every bound.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    sum_squares: AtomicU64,
    /// The bits of non-negative doubles order as the doubles do, so the atomic integer
    /// min and max keep the smallest and largest observation.
    min: AtomicU64,
    max: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds`, which must be increasing.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
            sum_squares: AtomicU64::new(0f64.to_bits()),
            min: AtomicU64::new(f64::INFINITY.to_bits()),
            max: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one observation; a negative or NaN one counts as zero.
    pub fn observe(&self, value: f64) {
        let value = if value > 0.0 { value } else { 0.0 };
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        add_f64(&self.sum, value);
        add_f64(&self.sum_squares, value * value);
        self.min.fetch_min(value.to_bits(), Ordering::Relaxed);
        self.max.fetch_max(value.to_bits(), Ordering::Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, duration: std::time::Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// What the histogram holds now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        let mut total = 0u64;
        for bucket in self.buckets.iter() {
            total += bucket.load(Ordering::Relaxed);
            cumulative.push(total);
        }
        let min = f64::from_bits(self.min.load(Ordering::Relaxed));
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
            sum_squares: f64::from_bits(self.sum_squares.load(Ordering::Relaxed)),
            min: if min.is_finite() { min } else { 0.0 },
            max: f64::from_bits(self.max.load(Ordering::Relaxed)),
        }
    }
}

fn add_f64(cell: &AtomicU64, value: f64) {
    let mut current = cell.load(Ordering::Relaxed);
    loop {
        let next = (f64::from_bits(current) + value).to_bits();
        match cell.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// The buckets' upper bounds.
    pub bounds: &'static [f64],
    /// Observations at or below each bound, then the total (the `+Inf` bucket).
    pub cumulative: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
    /// Sum of their squares.
    pub sum_squares: f64,
    /// The smallest (0 without any).
    pub min: f64,
    /// The largest (0 without any).
    pub max: f64,
}

impl HistogramSnapshot {
    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Their mean (0 without any).
    pub fn mean(&self) -> f64 {
        match self.count() {
            0 => 0.0,
            n => self.sum / n as f64,
        }
    }

    /// Their sample standard deviation, as go-metrics computes Consul's (0 below two).
    pub fn stddev(&self) -> f64 {
        let n = self.count();
        if n < 2 {
            return 0.0;
        }
        let n = n as f64;
        let variance = (self.sum_squares - self.sum * self.sum / n) / (n - 1.0);
        variance.max(0.0).sqrt()
    }
}

/// FNV-1a, to place a key in a [`SeriesTable`] without allocating.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // Separates the parts, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The series of one metric, keyed by label values found at run time, in a fixed number
/// of slots that are filled once and never emptied (open addressing, linear probing).
/// Finding a series that exists costs atomic loads only; adding one fills the first empty
/// slot of its probe sequence, and of two threads adding at once exactly one fills it (the
/// other sees the slot taken and compares keys), so a key is never held twice. A full table
/// refuses new keys, which bounds the memory a metric can take.
#[derive(Debug)]
pub struct SeriesTable<K, V> {
    slots: Box<[Slot<K, V>]>,
}

/// A slot of a [`SeriesTable`]: empty, or a key and its value, for good.
type Slot<K, V> = OnceLock<Box<(K, V)>>;

impl<K, V> SeriesTable<K, V> {
    /// A table of `capacity` slots.
    pub fn new(capacity: usize) -> Self {
        SeriesTable {
            slots: (0..capacity.max(1)).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The value of the key that `matches`, placed by `hash`; added with `make` when
    /// absent. `None` when the table is full.
    pub fn get_or_insert(
        &self,
        hash: u64,
        matches: impl Fn(&K) -> bool,
        make: impl FnOnce() -> (K, V),
    ) -> Option<&V> {
        let len = self.slots.len();
        let start = (hash % len as u64) as usize;
        let mut make = Some(make);
        let mut made: Option<Box<(K, V)>> = None;
        for step in 0..len {
            let slot = &self.slots[(start + step) % len];
            if slot.get().is_none() {
                let entry = match made.take() {
                    Some(entry) => entry,
                    // `make` is taken at most once: a made entry that lost its slot is kept
                    // in `made` for the next empty one.
                    None => Box::new((make.take()?)()),
                };
                if let Err(entry) = slot.set(entry) {
                    made = Some(entry);
                }
            }
            if let Some(entry) = slot.get() {
                if matches(&entry.0) {
                    return Some(&entry.1);
                }
            }
        }
        None
    }

    /// Every key and value held, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots
            .iter()
            .filter_map(|slot| slot.get())
            .map(|entry| (&entry.0, &entry.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let histogram = Histogram::new(&[1.0, 2.0, 5.0]);
        for value in [0.5, 1.0, 1.5, 2.0, 4.0, 7.0, -3.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        // -3 counts as 0; 1.0 and 2.0 fall in their own bucket (le is "at most").
        assert_eq!(snapshot.cumulative, vec![3, 5, 6, 7]);
        assert_eq!(snapshot.count(), 7);
        assert_eq!(snapshot.sum, 0.5 + 1.0 + 1.5 + 2.0 + 4.0 + 7.0);
        assert_eq!(snapshot.min, 0.0);
        assert_eq!(snapshot.max, 7.0);
    }

    #[test]
    fn histogram_mean_and_stddev_match_the_textbook() {
        let histogram = Histogram::new(LATENCY_BUCKETS);
        for value in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.mean(), 5.0);
        // Sample standard deviation of the classic example: sqrt(32 / 7).
        assert!((snapshot.stddev() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(snapshot.min, 2.0);
        assert_eq!(snapshot.max, 9.0);
    }

    #[test]
    fn an_empty_histogram_reads_as_zeros() {
        let snapshot = Histogram::new(&[1.0]).snapshot();
        assert_eq!(snapshot.count(), 0);
        assert_eq!(
            (snapshot.min, snapshot.max, snapshot.mean()),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(snapshot.stddev(), 0.0);
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let histogram = Histogram::new(&[0.5]);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        histogram.observe(1.0);
                    }
                });
            }
        });
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 40_000);
        assert_eq!(snapshot.sum, 40_000.0);
    }

    #[test]
    fn a_series_table_holds_each_key_once_even_under_races() {
        let table: SeriesTable<String, Counter> = SeriesTable::new(64);
        // Every key hashes to slot 0, the worst case for probing.
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for round in 0..200 {
                        let key = format!("k{}", round % 20);
                        let counter = table
                            .get_or_insert(0, |k| *k == key, || (key.clone(), Counter::new()))
                            .expect("room for 20 keys");
                        counter.inc();
                    }
                });
            }
        });
        let mut keys: Vec<&String> = table.iter().map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 20);
        assert_eq!(table.iter().count(), 20);
        assert_eq!(table.iter().map(|(_, c)| c.get()).sum::<u64>(), 800);
    }

    #[test]
    fn a_full_series_table_refuses_new_keys_but_finds_old_ones() {
        let table: SeriesTable<u32, ()> = SeriesTable::new(2);
        for key in [1u32, 2] {
            assert!(table
                .get_or_insert(u64::from(key), |k| *k == key, || (key, ()))
                .is_some());
        }
        assert!(table.get_or_insert(3, |k| *k == 3, || (3, ())).is_none());
        assert!(table.get_or_insert(1, |k| *k == 1, || (1, ())).is_some());
    }

    #[test]
    fn fnv_separates_parts() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[b"GET", b"/v1/kv"]), fnv1a(&[b"GET", b"/v1/kv"]));
    }
}
