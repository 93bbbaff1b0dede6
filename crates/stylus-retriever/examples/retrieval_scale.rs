//! Retrieval at catalog scale on synthetic clustered vectors: memory bandwidth, exact-scan
//! throughput, HNSW build time, query latency (p50/p99) and recall@150 against the exact scan.
//! Criterion (`benches/retrieval.rs`) covers the per-query costs; a 75K x 3072 graph takes minutes
//! to build, so this measures it once.
//!
//! ```text
//! cargo run --release -p stylus-retriever --example retrieval_scale -- 75000 384 [M] [ef_construction] [ef,ef,...]
//! ```

use std::time::Instant;

use stylus_core::{HnswConfig, RetrievalFilter};
use stylus_retriever::synthetic::{ClusteredVectors, docs};
use stylus_retriever::{ExactRetriever, Hit, HnswRetriever};

const K: usize = 150;
const QUERIES: usize = 200;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let n = arg(0, 75_000);
    let dim = arg(1, 384);
    let defaults = HnswConfig::default();
    let config = HnswConfig {
        max_connections: arg(2, defaults.max_connections),
        ef_construction: arg(3, defaults.ef_construction),
        ef_search: defaults.ef_search,
    };
    let efs: Vec<usize> = args.get(4).map_or(vec![150, 200, 300, 400], |s| {
        s.split(',').map(|e| e.parse().expect("ef list")).collect()
    });
    println!("threads: {}", rayon::current_num_threads());
    memory_bandwidth();

    let t = Instant::now();
    let clusters = ClusteredVectors::new(dim, 500, 1.0, 42);
    let vectors = clusters.matrix(n, 43);
    let queries = clusters.queries(QUERIES, 44);
    println!(
        "generated {n} x {dim} in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let retriever = HnswRetriever::build(docs(n), vectors.clone(), "synthetic", config).unwrap();
    let build_s = t.elapsed().as_secs_f64();
    println!(
        "hnsw build M={} ef_c={}: {build_s:.1} s",
        config.max_connections, config.ef_construction
    );

    let all = RetrievalFilter {
        allow_nsfw: true,
        ..RetrievalFilter::default()
    };
    // A separate exact retriever, so the HNSW one can change its ef below.
    let exact = ExactRetriever::new(docs(n), vectors.clone()).unwrap();
    let mut exact_ms = Vec::new();
    let mut truth = Vec::new();
    for q in &queries {
        let t = Instant::now();
        truth.push(exact.search(q, K, &all).unwrap());
        exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let bytes = vectors.byte_len() as f64;
    let (p50, p99) = percentiles(&mut exact_ms);
    println!(
        "exact single: p50 {p50:.2} ms p99 {p99:.2} ms, {:.1} GB/s",
        bytes / (p50 * 1e-3) / 1e9
    );
    let t = Instant::now();
    let batch = exact.search_batch(&queries, K, &all).unwrap();
    let per_query = t.elapsed().as_secs_f64() * 1e3 / queries.len() as f64;
    assert_eq!(batch, truth);
    println!(
        "exact batched ({} queries): {per_query:.2} ms/query, {:.1} GB/s of matrix per query",
        queries.len(),
        bytes / (per_query * 1e-3) / 1e9
    );

    let mut retriever = retriever;
    for ef in efs {
        retriever.set_ef_search(ef);
        let mut ms = Vec::new();
        let mut recall = 0.0;
        for (q, want) in queries.iter().zip(&truth) {
            let t = Instant::now();
            let got = retriever.search(q, K, &all).unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            recall += overlap(&got, want);
        }
        let (p50, p99) = percentiles(&mut ms);
        let filtered = RetrievalFilter::default(); // drops the 10% nsfw documents
        let mut fms = Vec::new();
        let mut frecall = 0.0;
        for q in &queries {
            let want = exact.search(q, K, &filtered).unwrap();
            let t = Instant::now();
            let got = retriever.search(q, K, &filtered).unwrap();
            fms.push(t.elapsed().as_secs_f64() * 1e3);
            frecall += overlap(&got, &want);
        }
        let (fp50, fp99) = percentiles(&mut fms);
        println!(
            "hnsw ef={ef}: p50 {p50:.2} ms p99 {p99:.2} ms recall@150 {:.4} | filtered: p50 {fp50:.2} ms p99 {fp99:.2} ms recall@150 {:.4}",
            recall / queries.len() as f64,
            frecall / queries.len() as f64
        );
    }
}

fn overlap(got: &[Hit], want: &[Hit]) -> f64 {
    let want: std::collections::HashSet<usize> = want.iter().map(|h| h.index).collect();
    got.iter().filter(|h| want.contains(&h.index)).count() as f64 / want.len() as f64
}

fn percentiles(ms: &mut [f64]) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

/// Read bandwidth of this machine: the best of several parallel sums over 1 GiB, and a memcpy.
fn memory_bandwidth() {
    use rayon::prelude::*;
    let len = 1 << 28; // 2^28 f32 = 1 GiB
    let data: Vec<f32> = (0..len).into_par_iter().map(|i| (i % 7) as f32).collect();
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let sum: f32 = data
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0f32; 16];
                for x in c.chunks_exact(16) {
                    for i in 0..16 {
                        acc[i] += x[i];
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        std::hint::black_box(sum);
        best = best.max((len * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    let mut copy = vec![0f32; len];
    let mut copy_gbs = 0f64;
    // The first pass also faults the destination pages in; the best pass is the bandwidth.
    for _ in 0..3 {
        let t = Instant::now();
        copy.par_chunks_mut(1 << 16)
            .zip(data.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        copy_gbs = copy_gbs.max((len * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    std::hint::black_box(&copy);
    println!(
        "memory bandwidth: read (parallel sum, best of 5) {best:.1} GB/s, memcpy (read+write) {copy_gbs:.1} GB/s"
    );
}
