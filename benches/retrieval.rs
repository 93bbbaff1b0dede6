//! Retrieval benchmarks (criterion): exact top-150 scan over 75,000 synthetic clustered,
//! normalized vectors at dim 384 and 3072 (single query and a batch of 4 per pass), and HNSW
//! search on a 20,000 x 384 graph. Throughput is reported in bytes of the matrix scanned, so
//! criterion prints GB/s. Building a 75K graph takes minutes on 2 cores, so build time, p50/p99
//! latency and recall@150 at 75K come from the standalone example
//! `cargo run --release -p stylus-retriever --example retrieval_scale`.
//!
//! `cargo bench --bench retrieval`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stylus_core::{HnswConfig, RetrievalFilter};
use stylus_retriever::synthetic::{ClusteredVectors, docs};
use stylus_retriever::{ExactRetriever, HnswRetriever};

const K: usize = 150;

fn exact(c: &mut Criterion) {
    let filter = RetrievalFilter::default();
    for dim in [384, 3072] {
        let n = 75_000;
        let clusters = ClusteredVectors::new(dim, 500, 1.0, 42);
        let vectors = clusters.matrix(n, 43);
        let bytes = vectors.byte_len() as u64;
        let retriever = ExactRetriever::new(docs(n), vectors).unwrap();
        let queries = clusters.queries(4, 44);
        let mut group = c.benchmark_group(format!("exact_75k_x_{dim}"));
        group.sample_size(10);
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function("top150_single_query", |b| {
            b.iter(|| retriever.search(&queries[0], K, &filter).unwrap())
        });
        // Four queries per pass over the matrix: bytes scanned once for all four.
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function("top150_batch_of_4", |b| {
            b.iter(|| retriever.search_batch(&queries, K, &filter).unwrap())
        });
        group.finish();
    }
}

fn hnsw(c: &mut Criterion) {
    let n = 20_000;
    let dim = 384;
    let clusters = ClusteredVectors::new(dim, 500, 1.0, 42);
    let retriever = HnswRetriever::build(
        docs(n),
        clusters.matrix(n, 43),
        "synthetic",
        HnswConfig::default(),
    )
    .unwrap();
    let queries = clusters.queries(64, 44);
    let mut group = c.benchmark_group("hnsw_20k_x_384");
    group.sample_size(10);
    for (name, filter) in [
        (
            "top150_no_filter",
            RetrievalFilter {
                allow_nsfw: true,
                ..RetrievalFilter::default()
            },
        ),
        ("top150_default_filter", RetrievalFilter::default()),
    ] {
        group.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % queries.len();
                retriever.search(&queries[i], K, &filter).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, exact, hnsw);
criterion_main!(benches);
