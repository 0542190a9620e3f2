//! What an observation costs on the hot paths: one HTTP request, one DNS query, one
//! histogram observation, from one thread and from two at once (the same series, the worst
//! case for shared cache lines).
//!
//!     cargo run --release -p atoll-metrics --example bench_observe

// A micro-benchmark outside any runtime: tokio's clock buys nothing here.
#![allow(clippy::disallowed_types)]

use std::hint::black_box;
use std::time::Instant;

use atoll_metrics::{DnsTransport, Histogram, NodeMetrics};

const ROUNDS: u32 = 2_000_000;

fn per_op(threads: u32, op: impl Fn() + Sync) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..ROUNDS {
                    op();
                }
            });
        }
    });
    started.elapsed().as_nanos() as f64 / f64::from(ROUNDS)
}

fn main() {
    let metrics = NodeMetrics::default();
    let histogram = Histogram::new(atoll_metrics::registry::LATENCY_BUCKETS);
    let cases: [(&str, &(dyn Fn() + Sync)); 3] = [
        ("HTTP request (route lookup, code, histogram)", &|| {
            metrics
                .http
                .observe(black_box("PUT"), black_box("/v1/kv/{*key}"), 200, 0.0012)
        }),
        ("DNS query (counter, histogram)", &|| {
            metrics
                .dns
                .observe(black_box(Some(1)), 0, DnsTransport::Udp, 0.00004)
        }),
        ("histogram observation", &|| {
            histogram.observe(black_box(0.003))
        }),
    ];
    for (name, op) in cases {
        println!(
            "{name}: {:.1} ns alone; {:.1} ns for two at once from 2 threads on one series",
            per_op(1, op),
            per_op(2, op)
        );
    }
}
