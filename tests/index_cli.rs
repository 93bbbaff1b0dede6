//! `stylus index` end to end on real Civitai cards (one part of ../shared/data/civitai).

use std::path::PathBuf;
use std::process::Command;

use stylus_refiner::lexical::LexicalEmbedder;
use stylus_refiner::store::StylusDocs;

fn part7() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/civitai/civitai_lora_sfw_2023-07_part7.jsonl"
    ))
}

#[test]
fn index_writes_a_verified_store_and_a_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(
        &broken,
        "{\"id\": 1, \"name\": \"ok\", \"type\": \"LoCon\"}\n{truncated\n",
    )
    .unwrap();
    let out = dir.path().join("store");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_stylus"))
            .args(["index", "--json", "--civitai"])
            .arg(part7())
            .arg("--civitai")
            .arg(&broken)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let output = run();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let read = summary["cards_read"].as_u64().unwrap();
    let kept = summary["kept"].as_u64().unwrap();
    let malformed = summary["malformed"].as_u64().unwrap();
    let skipped: u64 = summary["skipped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(read, 1010 + 2);
    assert_eq!(malformed, 1);
    assert_eq!(summary["skipped"]["adapter_type"], 1);
    assert_eq!(kept + skipped + malformed, read);
    assert!(summary["seconds"].as_f64().unwrap() > 0.0);
    assert!(String::from_utf8_lossy(&output.stderr).contains("broken.jsonl:2"));

    let store = StylusDocs::open(&out).unwrap();
    assert_eq!(store.len() as u64, kept);
    let embedder = LexicalEmbedder::from_store(&store).unwrap();
    // A query with a card's own embedding text finds that card first.
    let doc = &store.docs()[10];
    let query = embedder.embed_text(&doc.embedding_text);
    let score = |i: usize| -> f32 { store.vector(i).iter().zip(&query).map(|(x, y)| x * y).sum() };
    let best = (0..store.len())
        .max_by(|&a, &b| score(a).total_cmp(&score(b)))
        .unwrap();
    assert_eq!(best, 10);
    assert!((score(10) - 1.0).abs() < 1e-4);

    // Running again refreshes the store in place with the same content.
    let output = run();
    assert!(output.status.success());
    let again = StylusDocs::open(&out).unwrap();
    assert_eq!(again.manifest(), store.manifest());
}

#[test]
fn index_without_inputs_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stylus"))
        .args(["index", "--out"])
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
