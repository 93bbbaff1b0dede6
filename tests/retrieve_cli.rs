//! `stylus retrieve` end to end: the bundled catalog, a store built by `stylus index` from real
//! Civitai cards (exact, then with an HNSW index saved into the store), and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `../shared/data/civitai/..._part7.jsonl`, or `None` (the test is skipped) without it.
fn part7() -> Option<PathBuf> {
    stylus_test_data::shared("data/civitai/civitai_lora_sfw_2023-07_part7.jsonl")
}

fn stylus(args: &[&str], index: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stylus"));
    command.arg("retrieve");
    if let Some(dir) = index {
        command.arg("--index").arg(dir);
    }
    command.args(args).output().unwrap()
}

/// The JSON lines of a successful run.
fn lines(output: &Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `k` results, best first; Civitai ids are JSON numbers (`civitai_ids`), bundled ones strings.
fn assert_ranked(line: &serde_json::Value, query: &str, k: usize, civitai_ids: bool) {
    assert_eq!(line["query"], query);
    let results = line["results"].as_array().unwrap();
    assert_eq!(results.len(), k);
    let scores: Vec<f64> = results
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    for r in results {
        assert_eq!(r["id"].is_u64(), civitai_ids, "{r}");
        assert!(r["id"].is_u64() || r["id"].is_string(), "{r}");
        assert!(!r["title"].as_str().unwrap().is_empty());
    }
}

#[test]
fn bundled_catalog_answers_one_json_line_per_query() {
    let output = stylus(
        &["--json", "--top-k", "5", "a watercolor painting of a cat"],
        None,
    );
    let lines = lines(&output);
    assert_eq!(lines.len(), 1);
    assert_ranked(&lines[0], "a watercolor painting of a cat", 5, false);
}

#[test]
fn store_search_exact_then_hnsw_and_bad_input() {
    let Some(part7) = part7() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let indexed = Command::new(env!("CARGO_BIN_EXE_stylus"))
        .args(["index", "--json", "--civitai"])
        .arg(&part7)
        .arg("--out")
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        indexed.status.success(),
        "{}",
        String::from_utf8_lossy(&indexed.stderr)
    );
    let queries = dir.path().join("queries.txt");
    std::fs::write(
        &queries,
        "anime girl with silver hair\n\n a cyberpunk city at night \n",
    )
    .unwrap();
    let queries = queries.to_str().unwrap();

    let exact = lines(&stylus(
        &["--json", "--top-k", "20", "--queries", queries],
        Some(&store),
    ));
    assert_eq!(exact.len(), 2);
    assert_ranked(&exact[0], "anime girl with silver hair", 20, true);
    assert_ranked(&exact[1], "a cyberpunk city at night", 20, true);

    // Build the HNSW index into the store, then reload it: same top 20 as the exact scan here.
    let built = lines(&stylus(
        &[
            "--json",
            "--top-k",
            "20",
            "--build-hnsw",
            "--queries",
            queries,
        ],
        Some(&store),
    ));
    let reloaded = lines(&stylus(
        &["--json", "--top-k", "20", "--queries", queries],
        Some(&store),
    ));
    // Same ranking and fused scores (timings differ, and the vector evidence's last float bits
    // depend on the summation order of the graph or the scan).
    let results =
        |lines: &[serde_json::Value]| -> Vec<Vec<(serde_json::Value, serde_json::Value)>> {
            lines
                .iter()
                .map(|l| {
                    l["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| (r["id"].clone(), r["score"].clone()))
                        .collect()
                })
                .collect()
        };
    assert_eq!(results(&built), results(&reloaded));
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect()
    };
    for (e, h) in exact.iter().zip(&reloaded) {
        let (e, h) = (ids(e), ids(h));
        let common = h.iter().filter(|id| e.contains(id)).count();
        assert!(common >= 19, "HNSW top-20 shares {common} with exact");
    }
    let manifest = std::fs::read_to_string(store.join("manifest.json")).unwrap();
    assert!(manifest.contains("index.hnsw.graph") && manifest.contains("index.hnsw.data"));

    // K = 0 is a usage error (exit 2); a damaged index file is named.
    let zero = stylus(&["--top-k", "0", "cat"], Some(&store));
    assert_eq!(zero.status.code(), Some(2));
    let graph = store.join("index.hnsw.graph");
    let bytes = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, &bytes[..bytes.len() / 3]).unwrap();
    let damaged = stylus(&["cat"], Some(&store));
    assert_eq!(damaged.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&damaged.stderr).contains("index.hnsw.graph"));
}
