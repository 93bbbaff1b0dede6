//! Every text path of the refiner is total: HTML descriptions, Civitai JSON (lines and
//! documents), card refining and weights from card text, LoRA sidecars, and safetensors headers
//! on arbitrary bytes. No panic, bounded time on ~100 KB inputs, errors as values.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use stylus_core::StylusError;
use stylus_refiner::card_refiner::{
    CardRefiner, CardRefinerOptions, category_from_text, weight_from_prompts, weight_from_text,
    weight_range_from_text,
};
use stylus_refiner::civitai::{card_from_item, parse_civitai_bytes};
use stylus_refiner::html::{collapse_whitespace, html_to_text, truncate_chars};
use stylus_refiner::lora_folder::{
    detect_base_model, entry_from_lora_file, read_header, training_tags,
};
use stylus_test_data::hostile::{
    long_text, repeat_to, safetensors_file, safetensors_like_bytes, text, within,
};

const LIMIT: Duration = Duration::from_secs(10);

/// `html_to_text`'s promise: one line per block, single spaces within lines, no leading or
/// trailing whitespace, no empty lines.
fn check_html(html: &str) -> Result<(), TestCaseError> {
    let out = within(LIMIT, "html_to_text", || html_to_text(html));
    for line in out.split('\n').filter(|_| !out.is_empty()) {
        prop_assert!(
            line.split(' ')
                .all(|w| !w.is_empty() && !w.contains(char::is_whitespace)),
            "{line:?}"
        );
    }
    prop_assert_eq!(collapse_whitespace(&out), out.clone());
    for max in [0, 1, 7, 1000] {
        let cut = truncate_chars(&out, max);
        prop_assert!(cut.chars().count() <= max + 1, "{cut:?}");
    }
    Ok(())
}

/// Any JSON value, biased to the shapes the Civitai reader looks into.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|x| json!(x)),
        text(12).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::vec((text(3), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A field value: usually of the expected kind with hostile text, sometimes anything.
fn field(expected: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => expected.prop_map(Some),
        1 => json_value().prop_map(Some),
        1 => Just(None),
    ]
}

fn string() -> impl Strategy<Value = Value> {
    text(24).prop_map(Value::from)
}

fn strings() -> impl Strategy<Value = Value> {
    proptest::collection::vec(text(6), 0..4).prop_map(Value::from)
}

/// One Civitai model item with hostile content in every field.
fn civitai_item() -> impl Strategy<Value = Value> {
    let version = (
        field(prop_oneof![Just(json!("SD 1.5")), string()]),
        field(strings()),
        field(
            (
                string(),
                string(),
                prop_oneof![Just(json!("x.safetensors")), string()],
            )
                .prop_map(|(hash, url, name)| {
                    json!([{"name": name, "hashes": {"SHA256": hash}, "downloadUrl": url,
                            "sizeKB": 1.5}])
                }),
        ),
        field(
            proptest::collection::vec(string(), 0..3).prop_map(|prompts| {
                prompts
                    .into_iter()
                    .map(|p| json!({"url": "u", "meta": {"prompt": p}}))
                    .collect::<Vec<_>>()
                    .into()
            }),
        ),
        string(),
    )
        .prop_map(|(base, words, files, images, name)| {
            let mut v = serde_json::Map::new();
            v.insert("name".into(), name);
            for (key, value) in [
                ("baseModel", base),
                ("trainedWords", words),
                ("files", files),
                ("images", images),
            ] {
                if let Some(value) = value {
                    v.insert(key.into(), value);
                }
            }
            Value::Object(v)
        });
    (
        field(prop_oneof![
            any::<u32>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from)
        ]),
        field(string()),
        field(prop_oneof![
            Just(json!("LORA")),
            Just(json!("LoCon")),
            string()
        ]),
        field(text(48).prop_map(|t| Value::from(format!("<p>{t}</p><ul><li>{t}</li></ul>")))),
        field(strings()),
        field(any::<bool>().prop_map(Value::from)),
        field(proptest::collection::vec(version, 0..3).prop_map(Value::from)),
        field(json_value()),
    )
        .prop_map(
            |(id, name, kind, description, tags, nsfw, versions, stats)| {
                let mut item = serde_json::Map::new();
                for (key, value) in [
                    ("id", id),
                    ("name", name),
                    ("type", kind),
                    ("description", description),
                    ("tags", tags),
                    ("nsfw", nsfw),
                    ("modelVersions", versions),
                    ("stats", stats),
                ] {
                    if let Some(value) = value {
                        item.insert(key.into(), value);
                    }
                }
                Value::Object(item)
            },
        )
}

/// Lines of a JSONL dump: items, items cut short or with a character replaced, raw text.
fn jsonl_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => civitai_item().prop_map(|v| v.to_string()),
        1 => (civitai_item(), any::<prop::sample::Index>())
            .prop_map(|(v, at)| {
                let line = v.to_string();
                let cut = line.floor_char_boundary(at.index(line.len() + 1));
                line[..cut].to_owned()
            }),
        1 => (civitai_item(), any::<prop::sample::Index>(), any::<char>())
            .prop_map(|(v, at, c)| {
                let mut line = v.to_string();
                let i = line.floor_char_boundary(at.index(line.len() + 1));
                line.insert(i, c);
                line
            }),
        1 => text(32).prop_map(|t| t.replace('\n', " ")),
    ]
}

/// The reader's accounting: every item is an entry or a malformed `Json` error.
fn check_read(read: &stylus_refiner::civitai::CatalogRead) -> Result<(), TestCaseError> {
    prop_assert_eq!(read.items_read, read.entries.len() + read.malformed.len());
    for error in &read.malformed {
        prop_assert!(matches!(error, StylusError::Json { .. }), "{error:?}");
    }
    let refiner = CardRefiner::new(CardRefinerOptions::default());
    for entry in &read.entries {
        let doc = within(LIMIT, "refine_card", || refiner.refine_card(&entry.card));
        prop_assert!(
            doc.recommended_weight.is_finite(),
            "{}",
            doc.recommended_weight
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(stylus_test_data::hostile::config(256))]

    #[test]
    fn html_to_text_is_total(html in text(64)) {
        check_html(&html)?;
    }

    #[test]
    fn civitai_jsonl_lines_are_read_totally(lines in proptest::collection::vec(jsonl_line(), 0..6)) {
        let bytes = lines.join("\n").into_bytes();
        let read = within(LIMIT, "parse_civitai_bytes", || {
            parse_civitai_bytes(Path::new("cards.jsonl"), &bytes)
        });
        check_read(&read)?;
        // The same bytes as a `.json` file: one document, or JSONL when that fails.
        check_read(&parse_civitai_bytes(Path::new("cards.json"), &bytes))?;
    }

    #[test]
    fn civitai_items_and_documents_are_read_totally(items in proptest::collection::vec(civitai_item(), 0..4)) {
        for item in &items {
            let _ = card_from_item(item);
        }
        for document in [
            Value::from(items.clone()),
            json!({"items": items.clone(), "metadata": {"nextCursor": "c"}}),
            items.first().cloned().unwrap_or(Value::Null),
        ] {
            let bytes = serde_json::to_vec(&document).unwrap();
            check_read(&parse_civitai_bytes(Path::new("page.json"), &bytes))?;
        }
    }

    #[test]
    fn weights_and_categories_from_text_are_total(text in text(48), alias in text(4)) {
        if let Some(w) = weight_from_text(&text) {
            prop_assert!(w > 0.0 && w <= 2.0, "{w}");
        }
        if let Some((low, high)) = weight_range_from_text(&text) {
            prop_assert!(low <= high && low.is_finite() && high.is_finite());
        }
        let prompts = [text.clone(), format!("<lora:{alias}:{text}>"), format!("{text}<lora:{alias}:0.5>")];
        if let Some(w) = weight_from_prompts(&prompts, &alias) {
            prop_assert!(w.is_finite(), "{w}");
        }
        let _ = category_from_text(&text);
    }
}

proptest! {
    #![proptest_config(stylus_test_data::hostile::config(128))]

    #[test]
    fn safetensors_headers_on_arbitrary_bytes_are_values_or_typed_errors(
        bytes in prop_oneof![safetensors_like_bytes(), safetensors_file()],
        sidecar in text(32),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        match read_header(&path) {
            Ok(header) => {
                prop_assert!(8 + header.header_len <= bytes.len() as u64);
                let _ = detect_base_model(&header);
                let _ = training_tags(&header.metadata);
            }
            Err(error) => prop_assert!(
                matches!(error, StylusError::Safetensors { .. }),
                "{error:?}"
            ),
        }
        // With hostile sidecars beside it (Civitai Helper info, A1111 json, notes).
        std::fs::write(dir.path().join("x.civitai.info"), &sidecar).unwrap();
        std::fs::write(dir.path().join("x.json"), format!("{{\"description\": {sidecar:?}, \"preferred weight\": {sidecar:?}}}")).unwrap();
        std::fs::write(dir.path().join("x.txt"), &sidecar).unwrap();
        if let Ok(entry) = entry_from_lora_file(&path) {
            let _ = CardRefiner::new(CardRefinerOptions::default()).refine_card(&entry.card);
        }
    }
}

proptest! {
    #![proptest_config(stylus_test_data::hostile::config(16))]

    #[test]
    fn long_inputs_finish(text in long_text(100_000)) {
        check_html(&text)?;
        let _ = within(LIMIT, "weight_from_text", || weight_from_text(&text));
        let _ = within(LIMIT, "category_from_text", || category_from_text(&text));
        let line = json!({"id": 1, "name": text, "type": "LORA", "description": text,
                          "tags": [text], "modelVersions": [{"trainedWords": [text],
                          "images": [{"meta": {"prompt": text}}]}]}).to_string();
        let read = within(LIMIT, "parse_civitai_bytes", || {
            parse_civitai_bytes(Path::new("big.jsonl"), line.as_bytes())
        });
        check_read(&read)?;
        prop_assert_eq!(read.entries.len(), 1);
    }
}

/// Markup built to hit the HTML scanner's worst cases: thousands of dropped elements (each
/// looks for its closing tag), unterminated tags and comments, 1 MB in all.
#[test]
fn html_scanner_is_linear_on_pathological_markup() {
    let n = 1_000_000;
    for html in [
        repeat_to("<script>x</script>", n),
        repeat_to("<style></style>a", n),
        repeat_to("<SCRIPT>", n),
        repeat_to("<!--", n),
        repeat_to("<a", n),
        repeat_to("</", n),
        repeat_to("<p>", n),
        repeat_to("&amp;&#", n),
        repeat_to("< ", n),
    ] {
        check_html(&html).unwrap();
    }
}

/// Found by the property above on CI: LoKr factor widths come from the header and their product
/// overflowed `usize`.
#[test]
fn lokr_factor_widths_that_overflow_name_no_base_model() {
    let huge = 1usize << (usize::BITS / 2 + 1);
    let tensors = ["lokr_w1", "lokr_w2"]
        .into_iter()
        .map(|factor| {
            let info = stylus_refiner::lora_folder::TensorInfo {
                dtype: "F16".into(),
                shape: vec![2, huge],
            };
            (
                format!(
                    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.{factor}"
                ),
                info,
            )
        })
        .collect();
    assert_eq!(
        stylus_refiner::lora_folder::base_model_from_tensors(&tensors),
        None
    );
}
