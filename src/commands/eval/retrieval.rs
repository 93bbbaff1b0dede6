//! `stylus eval retrieval`: query with each card's sample-image prompt (LoRA tags removed) and
//! measure where the card it came from lands. The documents are refined WITHOUT their sample
//! prompts, so a prompt cannot find its own text.
//!
//! Configurations: BM25 over the card fields; the hashed TF-IDF embedder (the bundled default's);
//! MiniLM (when `$STYLUS_MINILM_DIR` or the default model directory holds it) on the paper's
//! embedding text ("title + description + tags") and on ours; and the hybrids (dense + BM25, RRF).
//! With MiniLM it also measures the HNSW index on the real catalog against the exact scan.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use stylus_composer::{LocalComposer, StrategyMasker, is_tag_list};
use stylus_core::{
    AdapterCard, AdapterDoc, Candidate, MaskStrategy, Query, RetrievalFilter, SearchIndex, Stylus,
    StylusConfig, StylusError, strip_lora_tags,
};
use stylus_refiner::bert::{BertEmbedder, default_minilm_dir};
use stylus_refiner::card_refiner::{CardRefiner, CardRefinerOptions, EmbeddingText};
use stylus_refiner::civitai::read_civitai_paths;
use stylus_refiner::filters::CardFilter;
use stylus_refiner::lexical::{DEFAULT_DIM, LexicalEmbedder};
use stylus_retriever::eval::{EvalCase, RankingMetrics};
use stylus_retriever::hybrid::reciprocal_rank_fusion;
use stylus_retriever::{
    ExactRetriever, FusionConfig, Hit, HnswRetriever, HybridRetriever, LexicalConfig, LexicalIndex,
    SparseRetriever, VectorMatrix,
};

use super::RetrievalArgs;

/// Candidates per query, as the paper retrieves.
const K: usize = 150;
/// How deep each ranking is read: the fusion's depth.
const DEPTH: usize = 300;

#[derive(Debug, Serialize)]
struct Report {
    cards: usize,
    queries: usize,
    configs: Vec<RankingMetrics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hnsw: Option<HnswReport>,
}

/// HNSW on the real catalog's MiniLM vectors.
#[derive(Debug, Serialize)]
struct HnswReport {
    documents: usize,
    dim: usize,
    build_seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    exact_p50_ms: f64,
    recall_at_150_vs_exact: f64,
}

pub fn run(args: &RetrievalArgs, config: &StylusConfig) -> Result<(), StylusError> {
    let read = read_civitai_paths(&args.civitai);
    let mut cards = Vec::new();
    let mut cases = Vec::new();
    for entry in CardFilter::new(&config.catalog).apply(read.entries).kept {
        let mut card = entry.card;
        let prompt = card
            .sample_prompts
            .first()
            .map(|p| strip_lora_tags(p).trim().to_string())
            .unwrap_or_default();
        // The prompt is the query: the document must not contain it.
        card.sample_prompts.clear();
        if !prompt.is_empty() {
            cases.push(EvalCase {
                query: prompt,
                target: card.id.clone(),
            });
        }
        cards.push(card);
    }
    if cases.is_empty() {
        return Err(StylusError::InvalidArgument(
            "no card with a sample prompt in the given catalog".into(),
        ));
    }
    let queries: Vec<String> = cases.iter().map(|c| c.query.clone()).collect();
    let all = RetrievalFilter {
        allow_nsfw: true,
        ..RetrievalFilter::default()
    };
    let paper_docs = refine(&cards, EmbeddingText::Paper);
    let rich_docs = refine(&cards, EmbeddingText::Rich);
    let mut configs = Vec::new();

    let t = Instant::now();
    let bm25 = LexicalIndex::build(rich_docs.clone(), LexicalConfig::default());
    let bm25_rankings = rank_bm25(&bm25, &queries, &all)?;
    configs.push(score("bm25 (card fields)", &cases, &bm25_rankings));
    tracing::info!("bm25: {:.1} s", t.elapsed().as_secs_f64());
    // The tuning grid of the field weights (the default above won on this development set).
    for (name, lexical) in [
        (
            "bm25 fields unweighted",
            LexicalConfig {
                title_weight: 1.0,
                tags_weight: 1.0,
                trigger_words_weight: 1.0,
                ..LexicalConfig::default()
            },
        ),
        (
            "bm25 title x5",
            LexicalConfig {
                title_weight: 5.0,
                ..LexicalConfig::default()
            },
        ),
        (
            "bm25 b=0.3",
            LexicalConfig {
                b: 0.3,
                ..LexicalConfig::default()
            },
        ),
    ] {
        let index = LexicalIndex::build(rich_docs.clone(), lexical);
        configs.push(score(name, &cases, &rank_bm25(&index, &queries, &all)?));
    }

    for (name, docs) in [
        ("tfidf paper text", &paper_docs),
        ("tfidf rich text", &rich_docs),
    ] {
        let texts: Vec<&str> = docs.iter().map(|d| d.embedding_text.as_str()).collect();
        let embedder = LexicalEmbedder::fit(&texts, DEFAULT_DIM)?;
        let doc_vectors: Vec<Vec<f32>> = texts.iter().map(|t| embedder.embed_text(t)).collect();
        let query_vectors: Vec<Vec<f32>> = queries.iter().map(|q| embedder.embed_text(q)).collect();
        let dense = exact(docs, DEFAULT_DIM, &doc_vectors)?;
        let rankings = rank_dense(&dense, &query_vectors, &all)?;
        configs.push(score(name, &cases, &rankings));
        if docs == &rich_docs {
            let hybrid = fuse(&rankings, &bm25_rankings, FusionConfig::default());
            configs.push(score("hybrid tfidf rich + bm25", &cases, &hybrid));
            // What `Stylus::retrieve` does on a default (lexical) store: BM25 of the whole prompt
            // and of each topic, fused, then the composer's rerank.
            let pipeline = Stylus::builder()
                .config(config.clone())
                .embedder(Arc::new(embedder))
                .retriever(Arc::new(HybridRetriever::bm25_only(
                    // As a lexical store searches its vectors (a topic of unknown words embeds
                    // to zero, which ranks nothing instead of failing).
                    Arc::new(SparseRetriever::new(
                        docs.clone(),
                        DEFAULT_DIM,
                        &doc_vectors.concat(),
                    )?),
                    LexicalIndex::build(rich_docs.clone(), LexicalConfig::default()),
                )))
                .composer(Arc::new(LocalComposer::new(config.composer.clone())))
                .masker(Arc::new(StrategyMasker::new(MaskStrategy::All)))
                .filter(all.clone())
                .build()?;
            let runtime = crate::commands::runtime()?;
            let rankings = queries
                .iter()
                .map(|q| runtime.block_on(pipeline.retrieve(q)))
                .collect::<Result<Vec<_>, _>>()?;
            configs.push(score("pipeline: bm25 + topics + rerank", &cases, &rankings));
            if let Some(path) = &args.details {
                write_details(path, &cases, &bm25_rankings, &rankings)?;
            }
        }
    }

    let mut hnsw = None;
    let bert = match default_minilm_dir().filter(|d| d.is_dir() && !args.no_bert) {
        Some(dir) => Some(BertEmbedder::from_dir(dir)?),
        None => None,
    };
    if let Some(bert) = bert {
        let t = Instant::now();
        let query_vectors = bert.embed_blocking(&queries)?;
        tracing::info!("MiniLM queries: {:.1} s", t.elapsed().as_secs_f64());
        for (name, docs) in [
            ("minilm paper text", &paper_docs),
            ("minilm rich text", &rich_docs),
        ] {
            let texts: Vec<&str> = docs.iter().map(|d| d.embedding_text.as_str()).collect();
            let t = Instant::now();
            let doc_vectors = bert.embed_blocking(&texts)?;
            tracing::info!("MiniLM {name}: {:.1} s", t.elapsed().as_secs_f64());
            let dim = doc_vectors.first().map_or(0, Vec::len);
            let dense = exact(docs, dim, &doc_vectors)?;
            let rankings = rank_dense(&dense, &query_vectors, &all)?;
            configs.push(score(name, &cases, &rankings));
            if docs == &rich_docs {
                hnsw = Some(measure_hnsw(
                    docs,
                    dim,
                    &doc_vectors,
                    &query_vectors,
                    config,
                )?);
                let hybrid = fuse(&rankings, &bm25_rankings, FusionConfig::default());
                configs.push(score("hybrid minilm rich + bm25", &cases, &hybrid));
                // The tuning grid of the fusion.
                for (name, rrf_k, lexical_weight) in [
                    ("hybrid rrf_k=20", 20.0, 1.0),
                    ("hybrid lexical x1", 60.0, 1.0),
                    ("hybrid lexical x2 rrf_k=20", 20.0, 2.0),
                ] {
                    let fusion = FusionConfig {
                        rrf_k,
                        lexical_weight,
                        ..FusionConfig::default()
                    };
                    configs.push(score(
                        name,
                        &cases,
                        &fuse(&rankings, &bm25_rankings, fusion),
                    ));
                }
            }
        }
    }

    let report = Report {
        cards: cards.len(),
        queries: cases.len(),
        configs,
        hnsw,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        print_report(&report);
    }
    Ok(())
}

fn refine(cards: &[AdapterCard], text: EmbeddingText) -> Vec<Arc<AdapterDoc>> {
    let refiner = CardRefiner::new(CardRefinerOptions {
        embedding_text: text,
        include_sample_prompts: false,
        ..CardRefinerOptions::default()
    });
    cards
        .iter()
        .map(|c| Arc::new(refiner.refine_card(c)))
        .collect()
}

fn exact(
    docs: &[Arc<AdapterDoc>],
    dim: usize,
    vectors: &[Vec<f32>],
) -> Result<Arc<ExactRetriever>, StylusError> {
    Ok(Arc::new(ExactRetriever::new(
        docs.to_vec(),
        VectorMatrix::from_rows(dim, vectors)?,
    )?))
}

/// Dense rankings, batched; a query the embedder maps to the zero vector (a TF-IDF prompt with
/// no known word) ranks nothing.
fn rank_dense(
    dense: &ExactRetriever,
    query_vectors: &[Vec<f32>],
    filter: &RetrievalFilter,
) -> Result<Vec<Vec<Candidate>>, StylusError> {
    let nonzero: Vec<usize> = (0..query_vectors.len())
        .filter(|&i| query_vectors[i].iter().any(|x| *x != 0.0))
        .collect();
    let batch: Vec<Query> = nonzero
        .iter()
        .map(|&i| Query::vector(&query_vectors[i]))
        .collect();
    let mut rankings = vec![Vec::new(); query_vectors.len()];
    for (i, ranking) in nonzero
        .into_iter()
        .zip(dense.retrieve_batch(&batch, DEPTH, filter)?)
    {
        rankings[i] = ranking;
    }
    Ok(rankings)
}

fn rank_bm25(
    index: &LexicalIndex,
    queries: &[String],
    filter: &RetrievalFilter,
) -> Result<Vec<Vec<Candidate>>, StylusError> {
    queries
        .iter()
        .map(|q| {
            Ok(index
                .search(q, DEPTH, filter)?
                .into_iter()
                .map(|h| Candidate {
                    doc: Arc::clone(&index.docs()[h.index]),
                    score: h.score,
                })
                .collect())
        })
        .collect()
}

/// How many titles of each ranking a `--details` line lists.
const DETAIL_TITLES: usize = 5;

/// One JSON line per query: `{"query", "tag_list", "bm25_rank", "pipeline_rank", "bm25_top",
/// "pipeline_top"}` (ranks 0-based within K, null when the card is not there).
fn write_details(
    path: &Path,
    cases: &[EvalCase],
    bm25: &[Vec<Candidate>],
    pipeline: &[Vec<Candidate>],
) -> Result<(), StylusError> {
    let io = |e| StylusError::io(path, e);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let rank = |ranking: &[Candidate], case: &EvalCase| {
        ranking
            .iter()
            .take(K)
            .position(|c| *c.doc.id() == case.target)
    };
    let titles = |ranking: &[Candidate]| {
        ranking
            .iter()
            .take(DETAIL_TITLES)
            .map(|c| c.doc.card.title.clone())
            .collect::<Vec<_>>()
    };
    for ((case, b), p) in cases.iter().zip(bm25).zip(pipeline) {
        let line = serde_json::json!({
            "query": case.query,
            "tag_list": is_tag_list(&case.query),
            "bm25_rank": rank(b, case),
            "pipeline_rank": rank(p, case),
            "bm25_top": titles(b),
            "pipeline_top": titles(p),
        });
        writeln!(out, "{line}").map_err(io)?;
    }
    out.flush().map_err(io)
}

/// Metrics of the top K of each ranking.
fn score(name: &str, cases: &[EvalCase], rankings: &[Vec<Candidate>]) -> RankingMetrics {
    let top: Vec<Vec<Candidate>> = rankings
        .iter()
        .map(|r| r[..r.len().min(K)].to_vec())
        .collect();
    RankingMetrics::score(name, cases, &top)
}

/// Dense and BM25 rankings fused as [`HybridRetriever`] fuses them.
fn fuse(
    dense: &[Vec<Candidate>],
    lexical: &[Vec<Candidate>],
    fusion: FusionConfig,
) -> Vec<Vec<Candidate>> {
    let docs = |r: &[Candidate]| r.iter().map(|c| Arc::clone(&c.doc)).collect::<Vec<_>>();
    dense
        .iter()
        .zip(lexical)
        .map(|(d, l)| {
            let (d, l) = (docs(d), docs(l));
            reciprocal_rank_fusion(
                &[(&d, fusion.dense_weight), (&l, fusion.lexical_weight)],
                fusion.rrf_k,
                K,
            )
        })
        .collect()
}

/// Builds the HNSW index on the real vectors and compares it with the exact scan.
fn measure_hnsw(
    docs: &[Arc<AdapterDoc>],
    dim: usize,
    doc_vectors: &[Vec<f32>],
    query_vectors: &[Vec<f32>],
    config: &StylusConfig,
) -> Result<HnswReport, StylusError> {
    let vectors = VectorMatrix::from_rows(dim, doc_vectors)?;
    let t = Instant::now();
    let index = HnswRetriever::build(docs.to_vec(), vectors, "minilm", config.retriever.hnsw)?;
    let build_seconds = t.elapsed().as_secs_f64();
    let filter = RetrievalFilter::default();
    let sample = &query_vectors[..query_vectors.len().min(500)];
    let (mut approx_ms, mut exact_ms, mut recall) = (Vec::new(), Vec::new(), 0.0);
    for q in sample {
        let t = Instant::now();
        let want = index.exact().search(q, K, &filter)?;
        exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let got = index.search(q, K, &filter)?;
        approx_ms.push(t.elapsed().as_secs_f64() * 1e3);
        recall += overlap(&got, &want);
    }
    let (p50_ms, p99_ms) = percentiles(&mut approx_ms);
    Ok(HnswReport {
        documents: docs.len(),
        dim,
        build_seconds,
        p50_ms,
        p99_ms,
        exact_p50_ms: percentiles(&mut exact_ms).0,
        recall_at_150_vs_exact: recall / sample.len() as f64,
    })
}

fn overlap(got: &[Hit], want: &[Hit]) -> f64 {
    let want: std::collections::HashSet<usize> = want.iter().map(|h| h.index).collect();
    got.iter().filter(|h| want.contains(&h.index)).count() as f64 / want.len().max(1) as f64
}

fn percentiles(ms: &mut [f64]) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len().max(1) - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

fn print_report(report: &Report) {
    println!(
        "{} cards, {} queries (sample prompts, <lora:...> removed)",
        report.cards, report.queries
    );
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8}",
        "configuration", "R@1", "R@10", "R@150", "MRR"
    );
    for m in &report.configs {
        println!(
            "{:<28} {:>8.4} {:>8.4} {:>8.4} {:>8.4}",
            m.name, m.recall_at_1, m.recall_at_10, m.recall_at_150, m.mrr
        );
    }
    if let Some(h) = &report.hnsw {
        println!(
            "HNSW on {} x {}: build {:.1} s, p50 {:.2} ms, p99 {:.2} ms (exact p50 {:.2} ms), recall@150 vs exact {:.4}",
            h.documents,
            h.dim,
            h.build_seconds,
            h.p50_ms,
            h.p99_ms,
            h.exact_p50_ms,
            h.recall_at_150_vs_exact
        );
    }
}
