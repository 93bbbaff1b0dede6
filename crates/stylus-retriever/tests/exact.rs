//! ExactRetriever against a naive f64 scan with a full sort, filters inside the scan, batches,
//! bad input.

use std::collections::BTreeSet;
use std::sync::Arc;

use stylus_core::{AdapterId, Category, Query, RetrievalFilter, SearchIndex, StylusError};
use stylus_retriever::synthetic::{ClusteredVectors, docs};
use stylus_retriever::{ExactRetriever, VectorMatrix};

fn naive_ranking(m: &VectorMatrix, q: &[f32], keep: impl Fn(usize) -> bool) -> Vec<(usize, f64)> {
    let norm = q.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let mut all: Vec<(usize, f64)> = (0..m.len())
        .filter(|&i| keep(i))
        .map(|i| {
            let s = m
                .row(i)
                .iter()
                .zip(q)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>();
            (i, s / norm)
        })
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all
}

fn pass_all() -> RetrievalFilter {
    RetrievalFilter {
        allow_nsfw: true,
        ..RetrievalFilter::default()
    }
}

/// Same set as the reference, ties aside: every returned score equals the reference score at the
/// same rank.
fn assert_same_ranking(got: &[stylus_retriever::Hit], want: &[(usize, f64)], k: usize) {
    assert_eq!(got.len(), k.min(want.len()));
    for (rank, hit) in got.iter().enumerate() {
        assert!(
            (hit.score as f64 - want[rank].1).abs() < 1e-5,
            "rank {rank}: {} vs {}",
            hit.score,
            want[rank].1
        );
    }
    let ids: BTreeSet<usize> = got.iter().map(|h| h.index).collect();
    let want_ids: BTreeSet<usize> = want[..got.len()].iter().map(|w| w.0).collect();
    assert!(
        ids.symmetric_difference(&want_ids).count() <= 2,
        "sets differ beyond a tie"
    );
}

#[test]
fn exact_matches_naive_full_sort_for_single_and_batched_queries() {
    let clusters = ClusteredVectors::new(37, 20, 1.0, 1);
    let n = 5000;
    let m = clusters.matrix(n, 2);
    let retriever = ExactRetriever::new(docs(n), m.clone()).unwrap();
    let queries = clusters.queries(7, 3); // one block of 4 plus a remainder of 3
    let batch = retriever.search_batch(&queries, 150, &pass_all()).unwrap();
    for (q, hits) in queries.iter().zip(&batch) {
        let want = naive_ranking(&m, q, |_| true);
        assert_same_ranking(hits, &want, 150);
        assert_eq!(hits, &retriever.search(q, 150, &pass_all()).unwrap());
    }
}

#[test]
fn filter_is_applied_inside_the_scan_and_never_starves_k() {
    let clusters = ClusteredVectors::new(16, 8, 1.0, 4);
    let n = 3000;
    let m = clusters.matrix(n, 5);
    let catalog = docs(n);
    let retriever = ExactRetriever::new(catalog.clone(), m.clone()).unwrap();
    let filter = RetrievalFilter {
        sd1_only: true,
        allow_nsfw: false,
        blocked_ids: [AdapterId::Civitai(1), AdapterId::Civitai(2)].into(),
        blocked_categories: [Category::Style].into(),
        blocked_tags: ["tag3".to_string()].into(),
    };
    let q = &clusters.queries(1, 6)[0];
    let hits = retriever.search(q, 150, &filter).unwrap();
    let want = naive_ranking(&m, q, |i| filter.accepts(&catalog[i]));
    assert_same_ranking(&hits, &want, 150);
    assert!(hits.iter().all(|h| filter.accepts(&catalog[h.index])));

    // A filter that lets only 3 documents through returns exactly those 3.
    let only: BTreeSet<AdapterId> = (4..=n as u64).map(AdapterId::Civitai).collect();
    let selective = RetrievalFilter {
        blocked_ids: only,
        allow_nsfw: true,
        ..RetrievalFilter::default()
    };
    let hits = retriever
        .retrieve(Query::vector(q), 150, &selective)
        .unwrap();
    let ids: BTreeSet<String> = hits.iter().map(|c| c.doc.id().to_string()).collect();
    assert_eq!(ids, ["1", "2", "3"].map(String::from).into());
}

#[test]
fn k_zero_is_an_error_and_k_above_the_catalog_returns_everything_ranked() {
    let clusters = ClusteredVectors::new(8, 3, 1.0, 7);
    let retriever = ExactRetriever::new(docs(50), clusters.matrix(50, 8)).unwrap();
    let q = &clusters.queries(1, 9)[0];
    assert!(matches!(
        retriever.retrieve(Query::vector(q), 0, &pass_all()),
        Err(StylusError::InvalidArgument(_))
    ));
    let all = retriever
        .retrieve(Query::vector(q), 1000, &pass_all())
        .unwrap();
    assert_eq!(all.len(), 50);
    assert!(all.windows(2).all(|w| w[0].score >= w[1].score));
}

#[test]
fn wrong_query_dimension_and_mismatched_counts_are_typed_errors() {
    let clusters = ClusteredVectors::new(8, 3, 1.0, 7);
    let retriever = ExactRetriever::new(docs(10), clusters.matrix(10, 8)).unwrap();
    assert!(matches!(
        retriever.retrieve(Query::vector(&[1.0; 9]), 5, &pass_all()),
        Err(StylusError::Dimension {
            expected: 8,
            got: 9,
            ..
        })
    ));
    assert!(matches!(
        retriever.retrieve(Query::vector(&[0.0; 8]), 5, &pass_all()),
        Err(StylusError::InvalidArgument(_))
    ));
    assert!(ExactRetriever::new(docs(11), clusters.matrix(10, 8)).is_err());
}

#[test]
fn concurrent_queries_on_one_shared_retriever_agree_with_serial_ones() {
    let clusters = ClusteredVectors::new(24, 10, 1.0, 11);
    let retriever = Arc::new(ExactRetriever::new(docs(2000), clusters.matrix(2000, 12)).unwrap());
    let queries = clusters.queries(16, 13);
    let serial: Vec<_> = queries
        .iter()
        .map(|q| {
            retriever
                .search(q, 20, &RetrievalFilter::default())
                .unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        for (q, want) in queries.iter().zip(&serial) {
            let retriever = Arc::clone(&retriever);
            s.spawn(move || {
                assert_eq!(
                    &retriever
                        .search(q, 20, &RetrievalFilter::default())
                        .unwrap(),
                    want
                );
            });
        }
    });
}
