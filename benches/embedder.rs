//! Sentence embedding throughput of `BertEmbedder` (all-MiniLM-L6-v2, burn-flex on the CPU):
//! one batch of 32 real Civitai card texts per iteration. The peer baseline is
//! `benches/embedder_st.py` (sentence-transformers on the same texts and CPU); docs/benchmarks.md,
//! section "Embedders", has both.
//!
//! Needs the model: run `tools/fetch-minilm.sh` first (or set STYLUS_MINILM_DIR).

use std::io::BufRead;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use regex::Regex;
use stylus_refiner::bert::{BertEmbedder, default_minilm_dir};

const CARDS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/civitai/civitai_lora_sfw_2023-07_part1.jsonl"
);
const BATCH: usize = 32;

/// The first `count` cards of part 1 as `{name}. {tags}. {description}`: the text rule of
/// tools/make_bert_fixture.py (HTML tags dropped, whitespace collapsed, description cut to 500
/// characters), which benches/embedder_st.py uses too.
fn card_texts(count: usize) -> Vec<String> {
    let tag = Regex::new(r"<[^>]*>").expect("valid regex");
    let spaces = Regex::new(r"[ \t\n\r]+").expect("valid regex");
    let file = std::fs::File::open(CARDS).expect("reading ../shared/data/civitai");
    std::io::BufReader::new(file)
        .lines()
        .take(count)
        .map(|line| {
            let card: serde_json::Value =
                serde_json::from_str(&line.expect("readable line")).expect("valid card JSON");
            let description = card["description"].as_str().unwrap_or_default();
            let without_tags = tag.replace_all(description, " ");
            let description = spaces.replace_all(&without_tags, " ");
            let description: String = description.trim_matches(' ').chars().take(500).collect();
            let tags: Vec<&str> = card["tags"]
                .as_array()
                .map(|tags| tags.iter().filter_map(|t| t.as_str()).collect())
                .unwrap_or_default();
            format!(
                "{}. {}. {description}",
                card["name"].as_str().unwrap_or_default(),
                tags.join(", ")
            )
        })
        .collect()
}

fn model_dir() -> PathBuf {
    let dir = default_minilm_dir().expect("set STYLUS_MINILM_DIR or HOME");
    assert!(
        dir.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 is not at {}: run tools/fetch-minilm.sh",
        dir.display()
    );
    dir
}

fn bench_bert_embedder(c: &mut Criterion) {
    if !std::path::Path::new(CARDS).is_file() {
        eprintln!(
            "skipped: bench embedder: needs {CARDS} (the shared data beside this repository)"
        );
        return;
    }
    let texts = card_texts(BATCH);
    let embedder = BertEmbedder::from_dir(model_dir())
        .expect("loading all-MiniLM-L6-v2")
        .with_batch_size(BATCH);
    let mut group = c.benchmark_group("embedder");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("bert_minilm_flex_batch32", |b| {
        b.iter(|| embedder.embed_blocking(&texts).expect("embedding"))
    });
    group.finish();
}

criterion_group!(benches, bench_bert_embedder);
criterion_main!(benches);
