//! `stylus index` stages on the whole Civitai dump (../shared/data/civitai: 7,955 cards plus the
//! three raw API examples): read + filter, refine (CardRefiner), lexical fit + embed, store write +
//! verified open. The peer baseline is `benches/index_peer.py` (the paper's filter and a hashed
//! TF-IDF of the same shape in Python/scikit-learn). docs/benchmarks.md, section "Indexing", has
//! the numbers.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use stylus_core::{AdapterCard, CatalogConfig};
use stylus_refiner::card_refiner::CardRefiner;
use stylus_refiner::civitai::read_civitai_paths;
use stylus_refiner::filters::CardFilter;
use stylus_refiner::lexical::{DEFAULT_DIM, LexicalEmbedder};
use stylus_refiner::store::{NewStore, StylusDocs};

fn civitai_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/civitai"
    ))
}

fn kept_cards() -> Vec<AdapterCard> {
    let read = read_civitai_paths(&[civitai_dir()]);
    let filtered = CardFilter::new(&CatalogConfig::default()).apply(read.entries);
    filtered.kept.into_iter().map(|e| e.card).collect()
}

fn bench_index(c: &mut Criterion) {
    if !civitai_dir().is_dir() {
        eprintln!(
            "skipped: bench index: needs the Civitai dump in {} (the shared data beside this \
             repository)",
            civitai_dir().display()
        );
        return;
    }
    let mut group = c.benchmark_group("index_civitai_7955");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));

    group.bench_function("read_and_filter", |b| b.iter(kept_cards));

    let cards = kept_cards();
    assert_eq!(cards.len(), 6_978);
    let refiner = CardRefiner::default();
    group.bench_function("refine_card", |b| {
        b.iter(|| {
            cards
                .iter()
                .map(|c| refiner.refine_card(c))
                .collect::<Vec<_>>()
        })
    });

    let docs: Vec<_> = cards.iter().map(|c| refiner.refine_card(c)).collect();
    let texts: Vec<&str> = docs.iter().map(|d| d.embedding_text.as_str()).collect();
    group.bench_function("lexical_fit_and_embed", |b| {
        b.iter(|| {
            let embedder = LexicalEmbedder::fit(&texts, DEFAULT_DIM).unwrap();
            texts
                .iter()
                .flat_map(|t| embedder.embed_text(t))
                .collect::<Vec<f32>>()
        })
    });

    let embedder = LexicalEmbedder::fit(&texts, DEFAULT_DIM).unwrap();
    let vectors: Vec<f32> = texts.iter().flat_map(|t| embedder.embed_text(t)).collect();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    group.bench_function("store_write_and_open", |b| {
        b.iter(|| {
            StylusDocs::write(
                &dir,
                NewStore {
                    embedder_id: stylus_core::Embedder::id(&embedder),
                    dim: DEFAULT_DIM,
                    docs: docs.clone(),
                    vectors: vectors.clone(),
                    extra_files: vec![embedder.store_file()],
                },
            )
            .unwrap();
            StylusDocs::open(&dir).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_index);
criterion_main!(benches);
