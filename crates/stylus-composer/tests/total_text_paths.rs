//! Every text path of the composer is total: arbitrary Unicode, control and zero-width
//! characters, prompt syntax and ~100 KB inputs never panic, finish in bounded time, and keep the
//! documented invariants (topics are slices of the prompt, in order, once each).

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use stylus_composer::llm::parse_reply;
use stylus_composer::people::{lower_words, person_name, title_name};
use stylus_composer::segmentation_eval::{
    content_words_baseline, normalize, parse_parti_csv, whole_prompt_baseline,
};
use stylus_composer::{LocalComposer, segment};
use stylus_core::ComposerConfig;
use stylus_core::openai::parse_json_reply;
use stylus_test_data::hostile::{long_text, text, within};

/// Work that is milliseconds on 100 KB; a quadratic blowup takes minutes.
const LIMIT: Duration = Duration::from_secs(10);

/// The documented invariants of `segment`: each topic is `prompt[start..end]`, non-empty and
/// trimmed; topics come in prompt order without overlapping; no topic is listed twice.
fn check_segments(prompt: &str) -> Result<(), TestCaseError> {
    let segments = within(LIMIT, "segment", || segment(prompt));
    let mut last_end = 0;
    let mut seen = std::collections::HashSet::new();
    for s in &segments {
        prop_assert!(s.start < s.end && s.end <= prompt.len(), "{s:?}");
        prop_assert!(prompt.is_char_boundary(s.start) && prompt.is_char_boundary(s.end));
        prop_assert_eq!(&prompt[s.start..s.end], s.text.as_str());
        prop_assert_eq!(s.text.trim(), s.text.as_str());
        prop_assert!(s.start >= last_end, "{s:?} overlaps the topic before it");
        prop_assert!(seen.insert(s.text.to_lowercase()), "{:?} repeated", s.text);
        last_end = s.end;
    }
    prop_assert_eq!(segment(prompt), segments, "segment is deterministic");
    Ok(())
}

fn check_composer(prompt: &str) -> Result<(), TestCaseError> {
    let composer = LocalComposer::new(ComposerConfig::default());
    let composition = within(LIMIT, "compose_now", || composer.compose_now(prompt, &[]));
    prop_assert_eq!(composition.adapter_count(), 0);
    for topic in &composition.topics {
        prop_assert!(
            prompt.contains(topic.topic.text.as_str()),
            "{:?}",
            topic.topic
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(stylus_test_data::hostile::config(256))]

    #[test]
    fn segment_is_total_on_hostile_text(prompt in text(64)) {
        check_segments(&prompt)?;
    }

    #[test]
    fn composer_and_word_helpers_are_total(prompt in text(48)) {
        check_composer(&prompt)?;
        prop_assert_eq!(whole_prompt_baseline(&prompt), vec![prompt.clone()]);
        for word in content_words_baseline(&prompt) {
            prop_assert!(!word.is_empty() && prompt.contains(word.as_str()));
        }
        let normalized = normalize(&prompt);
        prop_assert_eq!(normalize(&normalized), normalized.clone(), "normalize is idempotent");
        let words = lower_words(&prompt).into_iter().chain(person_name(&prompt)).chain(title_name(&prompt));
        for word in words {
            prop_assert!(!word.is_empty());
        }
    }

    #[test]
    fn parti_csv_parser_is_total(body in text(64), quoted in text(16)) {
        // Arbitrary text, and arbitrary text inside the real header and a quoted dict cell.
        for csv in [
            body.clone(),
            format!("caption,ranked_adapters\n{body}\n"),
            format!("caption,ranked_adapters\n\"{quoted}\",\"{{'{body}': [1, 2]}}\"\n"),
        ] {
            let _ = within(LIMIT, "parse_parti_csv", || parse_parti_csv(&csv, Path::new("p.csv")));
        }
    }

    #[test]
    fn llm_reply_reader_is_total(text in text(48), topic in text(8)) {
        // The model's reply is untrusted: any JSON value, and replies of the right shape with
        // hostile strings, give topics or a message, never a panic.
        for reply in [
            text.clone(),
            format!("```json\n{text}\n```"),
            format!("Sure! {{\"topics\": [\"{text}\"]}} hope it helps"),
        ] {
            if let Ok(value) = within(LIMIT, "parse_json_reply", || parse_json_reply(&reply)) {
                let _ = parse_reply(&value);
            }
        }
        let shaped = serde_json::json!({"topics": [
            {"topic": topic, "adapters": [text, 1, -1, 1e300, null, {"id": text}]},
            {"topic": null},
            "x",
        ]});
        let _ = parse_reply(&shaped);
    }
}

proptest! {
    #![proptest_config(stylus_test_data::hostile::config(24))]

    #[test]
    fn segment_and_composer_finish_on_100_kb_prompts(prompt in long_text(100_000)) {
        check_segments(&prompt)?;
        check_composer(&prompt)?;
        let _ = within(LIMIT, "content_words_baseline", || content_words_baseline(&prompt));
        let _ = within(LIMIT, "parse_json_reply", || parse_json_reply(&prompt));
    }
}

/// Inputs built to hit the scanners' worst cases: one huge word, deep brackets, only quotes,
/// only separators, a verb ending on 100 KB of CJK.
#[test]
fn segment_finishes_on_pathological_100_kb_prompts() {
    let n = 100_000;
    for prompt in [
        "a".repeat(n),
        "\"".repeat(n),
        "\u{201c}".repeat(n / 3),
        "(".repeat(n),
        ", ".repeat(n / 2),
        "the ".repeat(n / 4),
        "in the style of ".repeat(n / 16),
        format!("{}ed", "丸".repeat(n / 3)),
        format!("{}ing", "ッ".repeat(n / 3)),
        "a-".repeat(n / 2),
        "'".repeat(n),
        "\u{200b}".repeat(n / 3),
        "cat ".repeat(n / 4),
        (0..n / 8).map(|i| format!("w{i} ")).collect(),
    ] {
        check_segments(&prompt).unwrap();
        check_composer(&prompt).unwrap();
    }
    let nested = format!("{}{}", "{\"a\":".repeat(n / 5), "}".repeat(n / 5));
    let _ = within(LIMIT, "parse_json_reply", || parse_json_reply(&nested));
}
