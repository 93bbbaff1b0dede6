//! `stylus index` end to end on real Civitai cards (one part of ../shared/data/civitai; the tests
//! that read it skip without it, see `stylus-test-data`).

use std::path::PathBuf;
use std::process::Command;

use stylus_core::openai::testing::{StubReply, StubServer};
use stylus_refiner::lexical::LexicalEmbedder;
use stylus_refiner::postings_file::POSTINGS_FILE;
use stylus_refiner::store::StylusDocs;

/// `../shared/data/civitai/..._part7.jsonl`, or `None` (the test is skipped) without it.
fn part7() -> Option<PathBuf> {
    stylus_test_data::shared("data/civitai/civitai_lora_sfw_2023-07_part7.jsonl")
}

#[test]
fn index_writes_a_verified_store_and_a_json_summary() {
    let Some(part7) = part7() else { return };
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
            .arg(&part7)
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
    let score = |i: usize| -> f32 {
        store
            .vector(i)
            .unwrap()
            .iter()
            .zip(&query)
            .map(|(x, y)| x * y)
            .sum()
    };
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

    // A store written before the sparse postings file existed is written once more with it,
    // although nothing else changed.
    let postings = out.join(POSTINGS_FILE);
    assert!(postings.is_file());
    std::fs::remove_file(&postings).unwrap();
    let manifest_path = out.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["files"]
        .as_object_mut()
        .unwrap()
        .remove(POSTINGS_FILE)
        .unwrap();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    assert!(run().status.success());
    assert!(postings.is_file());
    assert_eq!(StylusDocs::open(&out).unwrap().manifest(), store.manifest());
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

    // An unknown refiner is a usage error, and no store is written.
    let cards = dir.path().join("cards.jsonl");
    std::fs::write(
        &cards,
        "{\"id\": 1, \"name\": \"ok\", \"type\": \"LORA\"}\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stylus"))
        .args(["index", "--refiner", "gpt", "--civitai"])
        .arg(&cards)
        .arg("--out")
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--refiner gpt"), "{stderr}");
    assert!(!dir.path().join("s").exists());
}

/// `--refiner vlm` against a stub OpenAI-compatible server on 127.0.0.1: every kept card is
/// asked once, answers land in the store and in the cache, a re-run asks nothing, and a server
/// that never answers usable JSON fails the run with an error naming the card.
#[test]
fn index_with_the_vlm_refiner_asks_each_card_once_and_resumes_from_its_cache() {
    let Some(part7) = part7() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cards = dir.path().join("cards.jsonl");
    let text = std::fs::read_to_string(part7).unwrap();
    let head: Vec<&str> = text.lines().take(6).collect();
    std::fs::write(&cards, head.join("\n")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reply = r#"{"description": "Soft pastel portraits.", "recommended_weight": 0.6}"#;
    let good = runtime.block_on(StubServer::sequence(vec![StubReply::chat(reply)]));
    let out = dir.path().join("store");
    let run = |server: &StubServer, out: &PathBuf| {
        Command::new(env!("CARGO_BIN_EXE_stylus"))
            .args(["index", "--json", "--refiner", "vlm:stub-vlm", "--civitai"])
            .arg(&cards)
            .arg("--out")
            .arg(out)
            .env("HOME", dir.path())
            .env("STYLUS_VLM_BASE_URL", server.base_url())
            .env_remove("STYLUS_VLM_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .output()
            .unwrap()
    };
    let output = run(&good, &out);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let kept = summary["kept"].as_u64().unwrap() as usize;
    assert!(kept >= 3, "{summary}");
    assert_eq!(good.request_count(), kept);
    assert_eq!(good.requests()[0].json()["model"], "stub-vlm");
    let store = StylusDocs::open(&out).unwrap();
    for doc in store.docs() {
        assert_eq!(doc.refiner, "vlm:stub-vlm");
        assert_eq!(doc.description, "Soft pastel portraits.");
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join(".cache/stylus/vlm"))
            .unwrap()
            .count(),
        kept
    );

    // A fresh store from the same cards: every answer comes from the cache.
    let output = run(&good, &dir.path().join("store2"));
    assert!(output.status.success());
    assert_eq!(good.request_count(), kept);

    // Garbage from the model, with nothing cached: the run fails, naming a card.
    std::fs::remove_dir_all(dir.path().join(".cache/stylus/vlm")).unwrap();
    let bad = runtime.block_on(StubServer::sequence(vec![StubReply::chat("no JSON here")]));
    let output = run(&bad, &dir.path().join("store3"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Results come back in card order, so the first card's failure is the one reported.
    let first = store.docs()[0].id();
    assert!(
        stderr.contains(&format!("adapter {first}: refining failed")),
        "{stderr}"
    );
    assert!(!dir.path().join("store3").exists());
}
