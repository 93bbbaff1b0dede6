//! Every text path of stylus-core is total: TOML config text, `<lora:...>` tag stripping, ids and names, and the A1111 prompt builder, on arbitrary Unicode, control and
//! zero-width characters and ~100 KB inputs: no panic, bounded time, errors as values.

use std::time::Duration;

use proptest::prelude::*;
use stylus_core::{
    AdapterId, BaseModel, Category, Composition, Mask, PromptBuilder, StylusConfig, Topic,
    TopicAdapters, strip_lora_tags,
};
use stylus_test_data::hostile::{long_text, repeat_to, text, within};

const LIMIT: Duration = Duration::from_secs(10);

/// A value to put after `key = `: valid TOML of every type, out-of-range numbers, and raw
/// hostile text (mostly invalid TOML).
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|x| format!("{x:?}")),
        Just("nan".to_owned()),
        Just("-inf".to_owned()),
        Just("1e999".to_owned()),
        Just("18446744073709551616".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        text(12).prop_map(|s| format!("{s:?}")), // a Rust string literal: often valid TOML
        text(12).prop_map(|s| format!("'{s}'")),
        text(12),
        Just("[1, \"a\", [], {}]".to_owned()),
        Just("{ a = 1 }".to_owned()),
    ]
}

/// TOML built from the default config's own lines with values, keys and section headers
/// replaced by hostile ones.
fn config_text() -> impl Strategy<Value = String> {
    let lines: Vec<String> = StylusConfig::default()
        .to_toml_string()
        .lines()
        .map(str::to_owned)
        .collect();
    let count = lines.len();
    proptest::collection::vec((0..count, 0u8..6, toml_value(), text(6)), 0..24).prop_map(
        move |edits| {
            let mut out = lines.clone();
            for (index, how, value, junk) in edits {
                let line = &out[index];
                out[index] = match (how, line.split_once(" = ")) {
                    (0..=2, Some((key, _))) => format!("{key} = {value}"),
                    (3, Some((_, old))) => format!("{junk} = {old}"),
                    (4, _) => format!("[{junk}]"),
                    (5, _) => String::new(),
                    _ => format!("{line}{junk}"),
                };
            }
            out.join("\n")
        },
    )
}

fn check_config(text: &str) -> Result<(), TestCaseError> {
    if let Ok(config) = within(LIMIT, "from_toml_str", || StylusConfig::from_toml_str(text)) {
        // What parsed can be written back and reads back the same.
        let written = config.to_toml_string();
        let again = StylusConfig::from_toml_str(&written);
        prop_assert!(again.is_ok(), "{written}\n{again:?}");
        prop_assert_eq!(again.unwrap().to_toml_string(), written);
    }
    Ok(())
}

proptest! {
    #![proptest_config(stylus_test_data::hostile::config(256))]

    #[test]
    fn config_parsing_is_total_on_hostile_toml(text in config_text()) {
        check_config(&text)?;
    }

    #[test]
    fn config_parsing_is_total_on_arbitrary_text(text in text(64)) {
        check_config(&text)?;
    }

    #[test]
    fn lora_tags_are_stripped_totally(prompt in text(64)) {
        let stripped = within(LIMIT, "strip_lora_tags", || strip_lora_tags(&prompt));
        // No tag survives that was closed, and the result is whitespace-normalized.
        if !prompt.contains("<lora:") {
            prop_assert_eq!(
                &stripped,
                &prompt.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
        prop_assert!(!stripped.contains("<lora:"), "{stripped:?}");
        prop_assert_eq!(strip_lora_tags(&stripped), stripped.clone());
    }

    #[test]
    fn ids_and_names_are_total(text in text(64)) {
        let id: AdapterId = text.parse().unwrap();
        let _ = id.to_string();
        let _ = BaseModel::parse(&text);
        let _ = Category::parse(&text);
    }

    #[test]
    fn prompt_builder_is_total(prompt in text(48), topics in proptest::collection::vec(text(4), 0..6)) {
        check_builder(&prompt, &topics)?;
    }
}

fn check_builder(prompt: &str, topics: &[String]) -> Result<(), TestCaseError> {
    let composition = Composition {
        topics: topics
            .iter()
            .map(|t| TopicAdapters {
                topic: Topic { text: t.clone() },
                adapters: Vec::new(),
            })
            .collect(),
    };
    let mask = Mask::all(&composition);
    for emphasis in [None, Some(1.2)] {
        let builder = PromptBuilder {
            debias: "realistic, best quality".into(),
            emphasize_uncovered: emphasis,
        };
        let out = within(LIMIT, "PromptBuilder::a1111", || {
            builder.a1111(prompt, &composition, &mask, &[])
        });
        prop_assert!(out.ends_with("realistic, best quality"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(stylus_test_data::hostile::config(16))]

    #[test]
    fn long_inputs_finish(text in long_text(100_000)) {
        check_config(&text)?;
        let _ = within(LIMIT, "strip_lora_tags", || strip_lora_tags(&text));
        check_builder(&text, &["cat".into(), "a".into(), text[..text.floor_char_boundary(50)].into()])?;
    }
}

/// Worst cases of the scanners: many unclosed tags, a needle that matches everywhere inside
/// deep parentheses (the emphasis search), deeply nested TOML.
#[test]
fn pathological_long_inputs_finish() {
    let n = 100_000;
    let _ = within(LIMIT, "strip_lora_tags", || {
        strip_lora_tags(&"<lora:".repeat(n / 6))
    });
    let _ = within(LIMIT, "strip_lora_tags", || {
        strip_lora_tags(&"<lora:>".repeat(n / 7))
    });
    let deep = format!("{}{}", "(".repeat(n / 2), "cat ".repeat(n / 8));
    check_builder(&deep, &["cat".into(), "dog".into()]).unwrap();
    for text in [
        "[".repeat(n),
        "a = ".to_owned() + &"[".repeat(n),
        "a = ".to_owned() + &"{ b = ".repeat(n / 6),
        repeat_to("[a.b.c]\n", n),
        "\"".repeat(n),
    ] {
        check_config(&text).unwrap();
    }
}
