//! `select` end to end (embed the prompt + retrieve the top 150 + compose with the local composer,
//! plus one sampled mask and its A1111 prompt) at catalog scale.
//!
//! Catalogs: the real Civitai cards of `../shared/data/civitai` after the paper's filter (~7K),
//! and 75K made by replicating them with perturbations (new ids, a title suffix, tags rotated and
//! one dropped, description cut at another length), so every copy has its own vector. Documents
//! are refined with the default `CardRefiner` and embedded with the offline `LexicalEmbedder`
//! (4096 buckets, fitted on the catalog) and searched with the `SparseRetriever` (exact, inverted
//! index), as `stylus select` does for lexical stores and the bundled catalog. Set
//! `STYLUS_BENCH_DENSE=1` to compare with the dense alternatives instead: HNSW on the real catalog
//! and the exact scan at 75K (a 75K x 4096 graph takes far longer to build than a bench setup
//! should). Prompts: the PartiPrompts captions, cycled.
//!
//! Besides criterion's estimate, the setup prints p50/p99 over single calls and the median split
//! into embed / retrieve / compose (from the plan's own timings).
//!
//! `cargo bench --bench select`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use stylus::{Catalog, SearchIndex, SelectOptions, Stylus, StylusConfig};
use stylus_composer::read_parti_csv;
use stylus_core::{AdapterCard, AdapterDoc, AdapterId, Embedder};
use stylus_refiner::card_refiner::CardRefiner;
use stylus_refiner::civitai::read_civitai_paths;
use stylus_refiner::filters::CardFilter;
use stylus_refiner::lexical::{DEFAULT_DIM, LexicalEmbedder};
use stylus_retriever::{ExactRetriever, HnswRetriever, SparseRetriever, VectorMatrix};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data");
const LARGE: usize = 75_000;
/// Single calls timed for the printed percentiles.
const TIMED_CALLS: usize = 300;

fn real_cards(config: &StylusConfig) -> Vec<AdapterCard> {
    let read = read_civitai_paths(&[PathBuf::from(SHARED).join("civitai")]);
    let filtered = CardFilter::new(&config.catalog).apply(read.entries);
    filtered.kept.into_iter().map(|e| e.card).collect()
}

/// `n` cards: the real ones, then perturbed copies.
fn scaled(cards: &[AdapterCard], n: usize) -> Vec<AdapterCard> {
    let suffixes = [
        "v2", "Redux", "Alt", "XL-port", "Remix", "Lite", "Plus", "Mk II", "Soft", "HD",
    ];
    (0..n)
        .map(|i| {
            let base = &cards[i % cards.len()];
            let copy = i / cards.len();
            if copy == 0 {
                return base.clone();
            }
            let mut card = base.clone();
            card.id = AdapterId::Name(format!("synthetic:{i}"));
            card.title = format!("{} {}", base.title, suffixes[copy % suffixes.len()]);
            if !card.tags.is_empty() {
                let shift = copy % card.tags.len();
                card.tags.rotate_left(shift);
                card.tags.pop();
            }
            let keep = card.description.len() * (10 - copy % 5) / 10;
            let cut = (0..=keep)
                .rev()
                .find(|&b| card.description.is_char_boundary(b))
                .unwrap_or(0);
            card.description.truncate(cut);
            card
        })
        .collect()
}

/// Which search the bench runs.
#[derive(Debug, Clone, Copy)]
enum Search {
    Sparse,
    Hnsw,
    Exact,
}

fn pipeline(cards: &[AdapterCard], config: &StylusConfig, search: Search) -> Stylus {
    let t = Instant::now();
    let refiner = CardRefiner::default();
    let docs: Vec<AdapterDoc> = cards.iter().map(|c| refiner.refine_card(c)).collect();
    let texts: Vec<&str> = docs.iter().map(|d| d.embedding_text.as_str()).collect();
    let embedder = LexicalEmbedder::fit(&texts, DEFAULT_DIM).unwrap();
    let mut vectors = Vec::with_capacity(docs.len() * DEFAULT_DIM);
    for text in &texts {
        vectors.extend(embedder.embed_text(text));
    }
    let embedded = t.elapsed().as_secs_f64();
    let id = Embedder::id(&embedder);
    let docs: Vec<Arc<AdapterDoc>> = docs.into_iter().map(Arc::new).collect();
    let t = Instant::now();
    let retriever: Arc<dyn SearchIndex> = match search {
        Search::Sparse => {
            Arc::new(SparseRetriever::new(docs.clone(), DEFAULT_DIM, &vectors).unwrap())
        }
        Search::Hnsw => {
            let matrix = VectorMatrix::new(DEFAULT_DIM, vectors).unwrap();
            Arc::new(HnswRetriever::build(docs.clone(), matrix, id, config.retriever.hnsw).unwrap())
        }
        Search::Exact => {
            let matrix = VectorMatrix::new(DEFAULT_DIM, vectors).unwrap();
            Arc::new(ExactRetriever::new(docs.clone(), matrix).unwrap())
        }
    };
    eprintln!(
        "{} docs: refine+embed {embedded:.1} s, index build {:.1} s",
        cards.len(),
        t.elapsed().as_secs_f64()
    );
    // What `stylus select` runs, through the library facade: the configured retrieval mode,
    // the local composer comparing topics with candidate names through the catalog's embedder,
    // the configured mask strategy.
    let catalog = Catalog::from_parts(Arc::new(embedder), retriever, docs, true, config);
    Stylus::open(catalog, config).unwrap()
}

fn prompts() -> Vec<String> {
    let rows = read_parti_csv(&Path::new(SHARED).join("stylus/parti_prompts.csv")).unwrap();
    rows.into_iter().map(|r| r.prompt).collect()
}

/// p50 / p99 of single calls and the median embed / retrieve / compose split, on stderr.
fn report(label: &str, stylus: &Stylus, prompts: &[String], runtime: &tokio::runtime::Runtime) {
    let options = SelectOptions {
        batch: Some(1),
        seed: 0,
    };
    let mut total = Vec::with_capacity(TIMED_CALLS);
    let mut parts: [Vec<f64>; 3] = Default::default();
    for i in 0..TIMED_CALLS {
        let t = Instant::now();
        let plan = runtime
            .block_on(stylus.select_with(&prompts[i % prompts.len()], options))
            .unwrap();
        total.push(t.elapsed().as_secs_f64() * 1e3);
        parts[0].push(plan.timings_ms.embed);
        parts[1].push(plan.timings_ms.retrieve);
        parts[2].push(plan.timings_ms.compose);
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    eprintln!(
        "{label}: select p50 {:.2} ms, p99 {:.2} ms; median embed {:.3} / retrieve {:.3} / compose {:.3} ms",
        pct(&mut total, 0.5),
        pct(&mut total, 0.99),
        pct(&mut parts[0], 0.5),
        pct(&mut parts[1], 0.5),
        pct(&mut parts[2], 0.5),
    );
}

fn select(c: &mut Criterion) {
    if !Path::new(SHARED).join("civitai").is_dir() {
        eprintln!(
            "skipped: bench select: needs the Civitai cards and PartiPrompts in {SHARED} \
             (a checkout of the shared data beside this repository)"
        );
        return;
    }
    let config = StylusConfig::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prompts = prompts();
    let real = real_cards(&config);
    let mut group = c.benchmark_group("select_local_composer");
    group.sample_size(30);
    let dense = std::env::var("STYLUS_BENCH_DENSE").is_ok_and(|v| v == "1");
    let (small, large) = if dense {
        (Search::Hnsw, Search::Exact)
    } else {
        (Search::Sparse, Search::Sparse)
    };
    for (label, cards, search) in [
        (
            format!("{}_real_cards_{small:?}", real.len()),
            real.clone(),
            small,
        ),
        (
            format!("{LARGE}_scaled_cards_{large:?}"),
            scaled(&real, LARGE),
            large,
        ),
    ] {
        let stylus = pipeline(&cards, &config, search);
        drop(cards);
        report(&label, &stylus, &prompts, &runtime);
        let options = SelectOptions {
            batch: Some(1),
            seed: 0,
        };
        let mut i = 0;
        group.bench_function(&label, |b| {
            b.iter(|| {
                i = (i + 1) % prompts.len();
                runtime
                    .block_on(stylus.select_with(&prompts[i], options))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, select);
criterion_main!(benches);
