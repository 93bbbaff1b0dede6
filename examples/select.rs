//! The whole selection pipeline from a library: the bundled catalog (embedded offline with the
//! lexical embedder), an exact retriever fused with BM25 (the configured `retriever.mode`), the
//! local composer comparing topics through the same embedder, and a seeded mask sampler, wired
//! into `Stylus`. Prints the topics with their adapters and one A1111 prompt per image.
//!
//! ```text
//! cargo run --example select -- "a corgi wearing a cowboy hat in the rain, watercolor painting"
//! ```

use std::sync::Arc;

use stylus_composer::{LocalComposer, StrategyMasker};
use stylus_core::{
    AdapterDoc, Embedder, MaskStrategy, SelectOptions, Stylus, StylusConfig, StylusError,
    format_weight,
};
use stylus_retriever::{ExactRetriever, VectorMatrix, hybrid};

#[tokio::main]
async fn main() -> Result<(), StylusError> {
    let prompt = std::env::args().nth(1).unwrap_or_else(|| {
        "a corgi wearing a cowboy hat in the rain, watercolor painting".to_string()
    });

    // 1. The catalog: a few hundred cards compiled into stylus-refiner, refined and embedded.
    let catalog = stylus_refiner::bundled::load()?;
    let dim = catalog.embedder.dim();
    let docs: Vec<Arc<AdapterDoc>> = catalog.docs.into_iter().map(Arc::new).collect();
    let dense = ExactRetriever::new(docs.clone(), VectorMatrix::new(dim, catalog.vectors)?)?;
    let embedder: Arc<dyn Embedder> = Arc::new(catalog.embedder);

    // 2. The pipeline with the defaults (top-150, <= 2 adapters per prompt, ...); the
    //    default retrieval mode fuses the dense ranking with BM25 over the same documents.
    let config = StylusConfig::default();
    let retriever = hybrid::with_mode(config.retriever.mode, Arc::new(dense), docs, true);
    let composer = LocalComposer::new(config.composer.clone()).with_embedder(embedder.clone());
    let stylus = Stylus::builder()
        .embedder(embedder)
        .retriever(retriever)
        .composer(Arc::new(composer))
        .masker(Arc::new(StrategyMasker::new(MaskStrategy::OneHotLoras)))
        .config(config)
        .build()?;

    // 3. Select for a batch of four images (four masks sampled with a seed).
    let plan = stylus
        .select_with(
            &prompt,
            SelectOptions {
                batch: Some(4),
                seed: 7,
            },
        )
        .await?;

    println!("{prompt}");
    for topic in &plan.topics {
        let adapters: Vec<String> = topic
            .adapters
            .iter()
            .map(|a| format!("{} ({})", a.title, format_weight(a.weight)))
            .collect();
        println!("  {:<24} {}", topic.text, adapters.join(", "));
    }
    for (i, mask) in plan.masks.iter().enumerate() {
        println!("image {}: {}", i + 1, mask.a1111_prompt);
    }
    let t = plan.timings_ms;
    println!(
        "embed {:.2} ms, retrieve {:.2} ms, compose {:.2} ms",
        t.embed, t.retrieve, t.compose
    );
    Ok(())
}
