//! CLIP tokenizer parity with transformers' `CLIPTokenizer` on real prompts.
//!
//! The fixture (`tests/fixtures/tokenizer/clip_ids.jsonl.gz`, made by
//! `tools/make_tokenizer_fixtures.py`) holds the reference ids and where each prompt comes from;
//! the prompt texts are read here from `../shared/data` (Civitai sample prompts, Parti prompts)
//! and from our own `edge_cases.json`. The edge cases always run; the real prompts skip without
//! `../shared` (see `stylus-test-data`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use stylus_diffusion::clip_tokenizer::{BOS_ID, CONTEXT_LENGTH, ClipTokenizer, EOS_ID};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Civitai sample prompts by (file, 1-based line, version index, image index).
fn civitai_prompt(
    shared_data: &Path,
    cache: &mut HashMap<String, Vec<String>>,
    file: &str,
    line: usize,
    version: usize,
    image: usize,
) -> String {
    let lines = cache.entry(file.to_string()).or_insert_with(|| {
        let path = shared_data.join("civitai").join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .map(str::to_string)
            .collect()
    });
    let card: serde_json::Value = serde_json::from_str(&lines[line - 1]).unwrap();
    card["modelVersions"][version]["images"][image]["prompt"]
        .as_str()
        .unwrap_or_else(|| panic!("{file}:{line}: no prompt at version {version} image {image}"))
        .to_string()
}

fn parti_captions(shared_data: &Path) -> Vec<String> {
    let path = shared_data.join("stylus/parti_prompts.csv");
    let mut reader = csv::Reader::from_path(&path).unwrap();
    let caption = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "caption")
        .unwrap();
    reader
        .records()
        .map(|r| r.unwrap()[caption].to_string())
        .collect()
}

fn fixture_records(path: &Path) -> Vec<serde_json::Value> {
    let file = std::fs::File::open(path).unwrap();
    BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// The fixture's records, and the edge-case prompts of `edge_cases.json`.
fn fixtures() -> (Vec<serde_json::Value>, Vec<String>) {
    let fixtures = crate_dir().join("tests/fixtures/tokenizer");
    let edge: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("edge_cases.json")).unwrap())
            .unwrap();
    let records = fixture_records(&fixtures.join("clip_ids.jsonl.gz"));
    assert!(records.len() >= 5000, "only {} prompts", records.len());
    (records, edge)
}

/// Checks `tokenize` and `encode` against the reference ids of every record whose prompt
/// `prompt_of` gives (`None`: a record of another source, not checked here). Returns the number
/// of records checked and how many of them are longer than the context.
fn check_records(
    records: &[serde_json::Value],
    mut prompt_of: impl FnMut(&[serde_json::Value]) -> Option<String>,
) -> (usize, usize) {
    let tokenizer = ClipTokenizer::bundled().unwrap();
    let mut mismatches = Vec::new();
    let (mut checked, mut truncated) = (0, 0);
    for record in records {
        let src = record["src"].as_array().unwrap();
        let Some(prompt) = prompt_of(src) else {
            continue;
        };
        checked += 1;
        let expected: Vec<u32> = record["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tokenizer.tokenize(&prompt);
        if ids != expected {
            mismatches.push(format!(
                "{src:?} {prompt:?}\n  got      {ids:?}\n  expected {expected:?}"
            ));
            continue;
        }
        // encode() is what diffusers feeds the text encoder: BOS + 75 + EOS, EOS padding.
        let mut padded = vec![BOS_ID];
        padded.extend(expected.iter().take(CONTEXT_LENGTH - 2));
        padded.push(EOS_ID);
        padded.resize(CONTEXT_LENGTH, EOS_ID);
        assert_eq!(tokenizer.encode(&prompt), padded, "{src:?}");
        truncated += usize::from(expected.len() > CONTEXT_LENGTH - 2);
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} prompts differ:\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    (checked, truncated)
}

#[test]
fn ids_equal_transformers_on_edge_case_prompts() {
    let (records, edge) = fixtures();
    let (checked, _) = check_records(&records, |src| match src[0].as_str().unwrap() {
        "edge" => Some(edge[src[1].as_u64().unwrap() as usize].clone()),
        "civitai" | "parti" => None,
        other => panic!("unknown source {other}"),
    });
    assert!(checked >= 20, "only {checked} edge-case prompts");
}

#[test]
fn ids_equal_transformers_on_civitai_and_parti_prompts() {
    let needs = [
        stylus_test_data::Need::shared("data/civitai"),
        stylus_test_data::Need::shared("data/stylus/parti_prompts.csv"),
    ];
    if !stylus_test_data::available(&needs) {
        return;
    }
    let shared_data = stylus_test_data::shared_dir().join("data");
    let (records, _) = fixtures();
    let parti = parti_captions(&shared_data);
    let mut civitai = HashMap::new();
    let (checked, truncated) = check_records(&records, |src| match src[0].as_str().unwrap() {
        "civitai" => Some(civitai_prompt(
            &shared_data,
            &mut civitai,
            src[1].as_str().unwrap(),
            src[2].as_u64().unwrap() as usize,
            src[3].as_u64().unwrap() as usize,
            src[4].as_u64().unwrap() as usize,
        )),
        "parti" => Some(parti[src[1].as_u64().unwrap() as usize].clone()),
        "edge" => None,
        other => panic!("unknown source {other}"),
    });
    assert!(checked >= 5000, "only {checked} real prompts");
    // The set must exercise truncation, not only short prompts.
    assert!(
        truncated > 100,
        "only {truncated} prompts longer than 75 tokens"
    );
}

#[test]
fn folder_tokenizer_equals_bundled_one() {
    // Write the bundled vocabulary as a Hugging Face folder and load it back.
    let bundled = ClipTokenizer::bundled().unwrap();
    let dir = tempfile::tempdir().unwrap();
    bundled.write_folder(dir.path()).unwrap();
    let folder = ClipTokenizer::from_folder(dir.path()).unwrap();
    for prompt in [
        "a photo of a cat",
        "Café ☕ &amp; 東京, (masterpiece:1.2)",
        "",
    ] {
        assert_eq!(folder.encode(prompt), bundled.encode(prompt), "{prompt}");
    }
}
