//! HnswRetriever: recall against the exact scan, filters inside the search with the exact fallback,
//! concurrency, persistence and every kind of bad input.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use stylus_core::{
    AdapterId, Category, HnswConfig, Query, RetrievalFilter, SearchIndex, StylusError,
};
use stylus_retriever::synthetic::{ClusteredVectors, docs};
use stylus_retriever::{Hit, HnswRetriever, VectorMatrix};

const DIM: usize = 32;
const N: usize = 3000;

/// One graph shared by every test (building it is the slow part).
fn catalog() -> &'static (ClusteredVectors, VectorMatrix, HnswRetriever) {
    static CATALOG: OnceLock<(ClusteredVectors, VectorMatrix, HnswRetriever)> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let clusters = ClusteredVectors::new(DIM, 30, 1.0, 21);
        let vectors = clusters.matrix(N, 22);
        let retriever = HnswRetriever::build(
            docs(N),
            vectors.clone(),
            "test-embedder",
            HnswConfig::default(),
        )
        .unwrap();
        (clusters, vectors, retriever)
    })
}

fn recall(got: &[Hit], want: &[Hit]) -> f64 {
    let want: BTreeSet<usize> = want.iter().map(|h| h.index).collect();
    got.iter().filter(|h| want.contains(&h.index)).count() as f64 / want.len() as f64
}

#[test]
fn hnsw_recall_at_150_matches_exact_with_and_without_a_filter() {
    let (clusters, _, retriever) = catalog();
    let queries = clusters.queries(20, 23);
    // No filter, a permissive one (over-fetching walk) and a selective one (~1/3 of the catalog
    // passes: the filter runs inside the walk).
    let third = RetrievalFilter {
        blocked_categories: Category::ALL[4..].iter().copied().collect(),
        ..Default::default()
    };
    let permissive = RetrievalFilter {
        sd1_only: true,
        ..Default::default()
    };
    for filter in [RetrievalFilter::default(), permissive, third] {
        let approx = retriever.search_batch(&queries, 150, &filter).unwrap();
        let exact = retriever
            .exact()
            .search_batch(&queries, 150, &filter)
            .unwrap();
        let mean: f64 = approx
            .iter()
            .zip(&exact)
            .map(|(a, e)| recall(a, e))
            .sum::<f64>()
            / queries.len() as f64;
        assert!(mean >= 0.99, "recall@150 {mean} with {filter:?}");
        let docs = retriever.exact().docs();
        for hits in &approx {
            assert_eq!(hits.len(), 150);
            assert!(hits.iter().all(|h| filter.accepts(&docs[h.index])));
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }
}

#[test]
fn selective_filter_falls_back_to_exact_and_still_returns_k() {
    let (clusters, _, retriever) = catalog();
    let q = &clusters.queries(1, 24)[0];
    // 200 of 3000 documents pass: fewer than a tenth, so the exact scan answers.
    let blocked: BTreeSet<AdapterId> = (201..=N as u64).map(AdapterId::Civitai).collect();
    let filter = RetrievalFilter {
        blocked_ids: blocked,
        allow_nsfw: true,
        ..Default::default()
    };
    let hits = retriever.search(q, 150, &filter).unwrap();
    assert_eq!(hits, retriever.exact().search(q, 150, &filter).unwrap());
    assert!(hits.iter().all(|h| h.index < 200));
    // Only 5 pass: all 5 come back.
    let blocked: BTreeSet<AdapterId> = (6..=N as u64).map(AdapterId::Civitai).collect();
    let filter = RetrievalFilter {
        blocked_ids: blocked,
        allow_nsfw: true,
        ..Default::default()
    };
    assert_eq!(
        retriever
            .retrieve(Query::vector(q), 150, &filter)
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn many_threads_query_one_index_concurrently() {
    let (clusters, _, retriever) = catalog();
    let queries = clusters.queries(32, 25);
    let serial = retriever
        .retrieve_batch(
            &queries.iter().map(|q| Query::vector(q)).collect::<Vec<_>>(),
            50,
            &RetrievalFilter::default(),
        )
        .unwrap();
    std::thread::scope(|s| {
        for (q, want) in queries.iter().zip(&serial) {
            s.spawn(move || {
                for _ in 0..3 {
                    let got = retriever
                        .retrieve(Query::vector(q), 50, &RetrievalFilter::default())
                        .unwrap();
                    assert_eq!(&got, want);
                }
            });
        }
    });
}

#[test]
fn save_and_reload_gives_identical_results() {
    let (clusters, vectors, retriever) = catalog();
    let dir = tempfile::tempdir().unwrap();
    let written = retriever.save(dir.path()).unwrap();
    assert_eq!(written.len(), 3);
    assert!(written.iter().all(|p| p.is_file()));
    let reloaded = HnswRetriever::load(
        dir.path(),
        docs(N),
        vectors.clone(),
        "test-embedder",
        HnswConfig::default(),
    )
    .unwrap();
    let queries = clusters.queries(10, 26);
    let filter = RetrievalFilter::default();
    assert_eq!(
        retriever.search_batch(&queries, 150, &filter).unwrap(),
        reloaded.search_batch(&queries, 150, &filter).unwrap()
    );
    // Saving again over the same directory replaces the index.
    reloaded.save(dir.path()).unwrap();
}

#[test]
fn reload_refuses_other_embedder_dimension_vectors_and_damaged_files() {
    let (clusters, vectors, retriever) = catalog();
    let dir = tempfile::tempdir().unwrap();
    retriever.save(dir.path()).unwrap();
    let load = |vectors: VectorMatrix, embedder: &str| {
        HnswRetriever::load(
            dir.path(),
            docs(vectors.len()),
            vectors,
            embedder,
            HnswConfig::default(),
        )
    };

    let err = load(vectors.clone(), "another-embedder").unwrap_err();
    assert!(matches!(err, StylusError::Store { .. }), "{err}");
    assert!(err.to_string().contains("another-embedder"), "{err}");

    let other_dim = ClusteredVectors::new(DIM + 1, 3, 1.0, 1).matrix(N, 2);
    assert!(matches!(
        load(other_dim, "test-embedder"),
        Err(StylusError::Dimension { .. })
    ));

    let other_vectors = clusters.matrix(N, 999);
    let err = load(other_vectors, "test-embedder").unwrap_err();
    assert!(err.to_string().contains("other vectors"), "{err}");

    let fewer = VectorMatrix::new(DIM, vectors.as_slice()[..DIM * 10].to_vec()).unwrap();
    assert!(matches!(
        load(fewer, "test-embedder"),
        Err(StylusError::Store { .. })
    ));

    // Truncate the graph, then flip one byte of the data: both named, neither reaches hnsw_rs.
    let graph = dir.path().join("index.hnsw.graph");
    let bytes = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(vectors.clone(), "test-embedder").unwrap_err();
    assert!(err.to_string().contains("index.hnsw.graph"), "{err}");
    std::fs::write(&graph, &bytes).unwrap();

    let data = dir.path().join("index.hnsw.data");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();
    let err = load(vectors.clone(), "test-embedder").unwrap_err();
    assert!(err.to_string().contains("index.hnsw.data"), "{err}");

    let manifest = dir.path().join("index.hnsw.json");
    std::fs::write(&manifest, "{\"format\": ").unwrap();
    assert!(matches!(
        load(vectors.clone(), "test-embedder"),
        Err(StylusError::Json { .. })
    ));
    std::fs::remove_file(&manifest).unwrap();
    assert!(matches!(
        load(vectors.clone(), "test-embedder"),
        Err(StylusError::Io { .. })
    ));
}

#[test]
fn bad_queries_k_and_config_are_typed_errors() {
    let (clusters, vectors, retriever) = catalog();
    let q = &clusters.queries(1, 27)[0];
    let filter = RetrievalFilter::default();
    assert!(matches!(
        retriever.retrieve(Query::vector(&q[1..]), 10, &filter),
        Err(StylusError::Dimension {
            expected: DIM,
            got: 31,
            ..
        })
    ));
    assert!(matches!(
        retriever.retrieve(Query::vector(q), 0, &filter),
        Err(StylusError::InvalidArgument(_))
    ));
    // K above the catalog: the whole filtered catalog, ranked, as the exact scan gives it.
    let all = retriever.search(q, N + 10, &filter).unwrap();
    assert_eq!(all, retriever.exact().search(q, N + 10, &filter).unwrap());
    let bad = HnswConfig {
        max_connections: 300,
        ..HnswConfig::default()
    };
    assert!(matches!(
        HnswRetriever::build(docs(N), vectors.clone(), "e", bad),
        Err(StylusError::InvalidArgument(_))
    ));
}

#[test]
fn empty_catalog_returns_nothing() {
    let empty = VectorMatrix::new(4, Vec::new()).unwrap();
    let retriever = HnswRetriever::build(Vec::new(), empty, "e", HnswConfig::default()).unwrap();
    assert!(retriever.is_empty());
    assert!(
        retriever
            .retrieve(
                Query::vector(&[1.0, 0.0, 0.0, 0.0]),
                5,
                &RetrievalFilter::default()
            )
            .unwrap()
            .is_empty()
    );
}
