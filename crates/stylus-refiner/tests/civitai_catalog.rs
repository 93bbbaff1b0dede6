//! Reading and filtering the real Civitai dump in ../shared/data/civitai (7,955 cards); the tests
//! skip without it (see `stylus-test-data`).

use std::path::PathBuf;

use stylus_core::{AdapterId, CatalogConfig};
use stylus_refiner::civitai::read_civitai_paths;
use stylus_refiner::filters::{CardFilter, SkipReason};

/// `../shared/data/civitai`, or `None` (the test is skipped) without it.
fn civitai_dir() -> Option<PathBuf> {
    stylus_test_data::shared("data/civitai")
}

/// The dump's 7 JSONL files hold 7,955 cards; the paper's filter (type LORA, not nsfw, an
/// "SD 1.5" version with a .safetensors file) keeps 6,978 of them. The directory also holds the
/// three raw API examples (two of them repeat dump cards, one is baseModel "Other"): the README's
/// "6,980" is the count without removing those two repeats.
#[test]
fn whole_dump_keeps_the_papers_count_and_accounts_for_every_card() {
    let Some(civitai_dir) = civitai_dir() else {
        return;
    };
    let read = read_civitai_paths(&[civitai_dir]);
    assert!(read.malformed.is_empty(), "{:?}", read.malformed.first());
    assert_eq!(read.items_read, 7_955 + 3);
    let filtered = CardFilter::new(&CatalogConfig::default()).apply(read.entries);
    assert_eq!(filtered.kept.len(), 6_978);
    assert_eq!(filtered.skipped[&SkipReason::Duplicate], 2);
    assert_eq!(
        filtered.skipped[&SkipReason::NoSd15Safetensors],
        7_955 - 6_978 + 1
    );
    assert_eq!(
        filtered.kept.len() + filtered.skipped_total() + read.malformed.len(),
        read.items_read
    );
    // Every kept card has its version's file, alias and a Civitai id.
    for entry in &filtered.kept {
        let card = &entry.card;
        assert!(matches!(card.id, AdapterId::Civitai(_)));
        let file = card.file.as_ref().expect("kept cards have a file");
        assert!(
            file.name.to_lowercase().ends_with(".safetensors"),
            "{}",
            entry.origin
        );
        assert!(card.alias.is_some(), "{}", entry.origin);
        assert!(!card.description.contains("</p>"), "{}", entry.origin);
    }
}

#[test]
fn jsonl_files_only_keep_6978() {
    let Some(civitai_dir) = civitai_dir() else {
        return;
    };
    let files: Vec<PathBuf> = (1..=7)
        .map(|i| civitai_dir.join(format!("civitai_lora_sfw_2023-07_part{i}.jsonl")))
        .collect();
    let read = read_civitai_paths(&files);
    assert_eq!(read.items_read, 7_955);
    let filtered = CardFilter::new(&CatalogConfig::default()).apply(read.entries);
    assert_eq!(filtered.kept.len(), 6_978);
    assert_eq!(filtered.skipped.get(&SkipReason::Duplicate), None);
    assert_eq!(filtered.kept.len() + filtered.skipped_total(), 7_955);
}

#[test]
fn malformed_lines_are_counted_with_their_line_numbers() {
    let Some(civitai_dir) = civitai_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source =
        std::fs::read_to_string(civitai_dir.join("civitai_lora_sfw_2023-07_part7.jsonl")).unwrap();
    let mut lines: Vec<String> = source.lines().take(20).map(str::to_string).collect();
    lines[4] = lines[4][..lines[4].len() / 2].to_string();
    lines[9] = "{\"id\": 5, \"name\": \"no type\"}".into();
    let path = dir.path().join("broken.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let read = read_civitai_paths(&[path]);
    assert_eq!(read.items_read, 20);
    assert_eq!(read.entries.len(), 18);
    let messages: Vec<String> = read.malformed.iter().map(ToString::to_string).collect();
    assert!(messages[0].contains("broken.jsonl:5:"), "{messages:?}");
    assert!(messages[1].contains("broken.jsonl:10:") && messages[1].contains("`type`"));
}
