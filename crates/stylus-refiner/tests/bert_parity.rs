//! BertEmbedder against sentence-transformers, and its typed errors on bad model files.
//!
//! The parity tests need all-MiniLM-L6-v2: run `tools/fetch-minilm.sh` (it installs the model
//! where [`default_minilm_dir`] looks). The fixture `tests/fixtures/bert/minilm_cards.safetensors`
//! comes from `tools/make_bert_fixture.py`; it stores card ids and embeddings, and the card texts
//! are rebuilt here from ../shared/data/civitai with the same rule. Without the model or the
//! shared data the parity tests skip with one line (with `STYLUS_REQUIRE_TEST_DATA=1` they fail).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use regex::Regex;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use stylus_core::{Embedder, StylusError};
use stylus_refiner::bert::{BertEmbedder, Pooling, default_minilm_dir, hf_snapshot_dir};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/bert/minilm_cards.safetensors"
);
const CARDS: &str = "data/civitai/civitai_lora_sfw_2023-07_part1.jsonl";
const MIN_COSINE: f32 = 0.9999;

/// What the parity tests read from outside the repository: the model directory and the cards.
struct Inputs {
    minilm: PathBuf,
    cards: PathBuf,
}

/// The MiniLM directory and `../shared/<CARDS>`, or `None` (the test is skipped) without them.
fn inputs() -> Option<Inputs> {
    let minilm = default_minilm_dir();
    let needs = [
        stylus_test_data::Need::download(
            "all-MiniLM-L6-v2",
            minilm.as_ref().map(|d| d.join("model.safetensors")),
            "run tools/fetch-minilm.sh or point STYLUS_MINILM_DIR at a copy",
        ),
        stylus_test_data::Need::shared(CARDS),
    ];
    stylus_test_data::available(&needs).then(|| Inputs {
        minilm: minilm.unwrap_or_default(),
        cards: needs[1].path().unwrap().to_path_buf(),
    })
}

/// The fixture's tensors: card ids, mean-pooled embeddings, CLS-pooled embeddings.
struct Fixture {
    card_ids: Vec<i64>,
    embeddings: Vec<Vec<f32>>,
    cls_embeddings: Vec<Vec<f32>>,
}

fn load_fixture() -> Fixture {
    let bytes = std::fs::read(FIXTURE).expect("reading the parity fixture");
    let file = SafeTensors::deserialize(&bytes).expect("parsing the parity fixture");
    let rows = |name: &str| -> Vec<Vec<f32>> {
        let view = file.tensor(name).unwrap();
        assert_eq!(view.dtype(), Dtype::F32);
        let width = view.shape()[1];
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        values.chunks_exact(width).map(<[f32]>::to_vec).collect()
    };
    let ids = file.tensor("card_ids").unwrap();
    assert_eq!(ids.dtype(), Dtype::I64);
    Fixture {
        card_ids: ids
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        embeddings: rows("embeddings"),
        cls_embeddings: rows("cls_embeddings"),
    }
}

/// The card text rule of tools/make_bert_fixture.py (`card_text`): `{name}. {tags}. {description}`
/// with HTML tags replaced by spaces, space/tab/CR/LF runs collapsed, outer spaces trimmed, and the
/// description cut to 500 characters.
fn card_texts(cards: &Path, ids: &[i64]) -> Vec<String> {
    let tag = Regex::new(r"<[^>]*>").unwrap();
    let spaces = Regex::new(r"[ \t\n\r]+").unwrap();
    let file = std::fs::File::open(cards).expect("reading ../shared/data/civitai");
    let mut by_id = HashMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let card: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let description = card["description"].as_str().unwrap_or_default();
        let without_tags = tag.replace_all(description, " ");
        let description = spaces.replace_all(&without_tags, " ");
        let description: String = description.trim_matches(' ').chars().take(500).collect();
        let tags: Vec<&str> = card["tags"]
            .as_array()
            .map(|tags| tags.iter().map(|t| t.as_str().unwrap()).collect())
            .unwrap_or_default();
        let text = format!(
            "{}. {}. {description}",
            card["name"].as_str().unwrap(),
            tags.join(", ")
        );
        by_id.insert(card["id"].as_i64().unwrap(), text);
        if by_id.len() == ids.len() && ids.iter().all(|id| by_id.contains_key(id)) {
            break;
        }
    }
    ids.iter()
        .map(|id| {
            by_id
                .remove(id)
                .unwrap_or_else(|| panic!("card {id} not in {}", cards.display()))
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Asserts every row's cosine to the reference and returns the smallest.
fn assert_parity(ours: &[Vec<f32>], reference: &[Vec<f32>], ids: &[i64]) -> f32 {
    assert_eq!(ours.len(), reference.len());
    let mut worst = 1.0f32;
    for ((got, want), id) in ours.iter().zip(reference).zip(ids) {
        assert_eq!(got.len(), want.len());
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "card {id}: norm {norm}");
        let cos = cosine(got, want);
        assert!(cos >= MIN_COSINE, "card {id}: cosine {cos} < {MIN_COSINE}");
        worst = worst.min(cos);
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_matches_sentence_transformers_on_real_cards() {
    let Some(inputs) = inputs() else { return };
    let fixture = load_fixture();
    assert!(fixture.card_ids.len() >= 100);
    let texts = card_texts(&inputs.cards, &fixture.card_ids);
    let embedder = BertEmbedder::from_dir(inputs.minilm).unwrap();
    assert_eq!(embedder.dim(), 384);
    assert_eq!(embedder.sentence_config().max_seq_length, 256);
    assert_eq!(embedder.sentence_config().pooling, Pooling::Mean);
    assert!(
        embedder
            .id()
            .starts_with("bert:mean:256:sha256-53aa51172d14:config-")
    );

    let ours = embedder.embed(&texts).await.unwrap();
    let worst = assert_parity(&ours, &fixture.embeddings, &fixture.card_ids);
    let max_abs = ours
        .iter()
        .flatten()
        .zip(fixture.embeddings.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "{} cards: min cosine {worst:.9}, max |diff| {max_abs:.3e}",
        texts.len()
    );
}

#[test]
fn minilm_vectors_do_not_depend_on_batching() {
    let Some(inputs) = inputs() else { return };
    let fixture = load_fixture();
    let ids = &fixture.card_ids[..12];
    let texts = card_texts(&inputs.cards, ids);
    let embedder = BertEmbedder::from_dir(inputs.minilm).unwrap();
    let batched = embedder.embed_blocking(&texts).unwrap();
    let one_by_one = embedder
        .clone()
        .with_batch_size(1)
        .embed_blocking(&texts)
        .unwrap();
    for ((a, b), id) in batched.iter().zip(&one_by_one).zip(ids) {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff < 1e-5,
            "card {id}: batch of 12 vs alone differ by {diff}"
        );
    }
    assert!(embedder.embed_blocking::<String>(&[]).unwrap().is_empty());
}

/// bge models pool the `[CLS]` state: the same MiniLM weights with a CLS pooling config
/// (sentence-transformers >= 6 format) against sentence-transformers with CLS pooling.
#[test]
fn cls_pooling_matches_sentence_transformers() {
    let Some(inputs) = inputs() else { return };
    let fixture = load_fixture();
    let count = fixture.cls_embeddings.len();
    let ids = &fixture.card_ids[..count];
    let texts = card_texts(&inputs.cards, ids);
    let source = inputs.minilm;
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "sentence_bert_config.json",
    ] {
        std::os::unix::fs::symlink(source.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"embedding_dimension": 384, "pooling_mode": "cls", "include_prompt": true}"#,
    )
    .unwrap();
    let embedder = BertEmbedder::from_dir(dir.path()).unwrap();
    assert_eq!(embedder.sentence_config().pooling, Pooling::Cls);
    let ours = embedder.embed_blocking(&texts).unwrap();
    assert_parity(&ours, &fixture.cls_embeddings, ids);
}

// ---- bad model files: a tiny BERT written here (hidden 4, one layer, 8-token vocabulary) ----

const TINY_TOKENIZER: &str = r###"{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                 "strip_accents": null, "lowercase": true},
  "pre_tokenizer": {"type": "BertPreTokenizer"},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
               {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
             {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
    "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                       "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
  "decoder": null,
  "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "cat": 5, "dog": 6, "##s": 7}}
}"###;

const TINY_CONFIG: &str = r#"{"model_type": "bert", "hidden_size": 4, "num_hidden_layers": 1,
  "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 16,
  "vocab_size": 8, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}"#;

/// Name and shape of every tensor of the tiny BERT, as transformers names them.
fn tiny_tensors() -> Vec<(String, Vec<usize>)> {
    let mut tensors = vec![
        ("embeddings.word_embeddings.weight".to_owned(), vec![8, 4]),
        (
            "embeddings.position_embeddings.weight".to_owned(),
            vec![16, 4],
        ),
        (
            "embeddings.token_type_embeddings.weight".to_owned(),
            vec![2, 4],
        ),
        ("embeddings.LayerNorm.weight".to_owned(), vec![4]),
        ("embeddings.LayerNorm.bias".to_owned(), vec![4]),
    ];
    let layer = "encoder.layer.0";
    for (module, d_out, d_in) in [
        ("attention.self.query", 4, 4),
        ("attention.self.key", 4, 4),
        ("attention.self.value", 4, 4),
        ("attention.output.dense", 4, 4),
        ("intermediate.dense", 8, 4),
        ("output.dense", 4, 8),
    ] {
        tensors.push((format!("{layer}.{module}.weight"), vec![d_out, d_in]));
        tensors.push((format!("{layer}.{module}.bias"), vec![d_out]));
    }
    for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
        tensors.push((format!("{layer}.{norm}.weight"), vec![4]));
        tensors.push((format!("{layer}.{norm}.bias"), vec![4]));
    }
    tensors
}

/// Writes a tiny model directory with `tensors` (deterministic values) and `key_prefix`.
fn write_tiny_model(dir: &Path, tensors: &[(String, Vec<usize>)], key_prefix: &str) {
    std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
    std::fs::write(dir.join("tokenizer.json"), TINY_TOKENIZER).unwrap();
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .enumerate()
        .map(|(t, (name, shape))| {
            let count: usize = shape.iter().product();
            let bytes = (0..count)
                .flat_map(|i| (((i * 7 + t * 13) % 17) as f32 / 17.0 - 0.4).to_le_bytes())
                .collect();
            (format!("{key_prefix}{name}"), shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn load_error(dir: &Path) -> StylusError {
    BertEmbedder::from_dir(dir).expect_err("loading should fail")
}

#[test]
fn tiny_model_loads_with_and_without_bert_prefix() {
    let plain = tempfile::tempdir().unwrap();
    let prefixed = tempfile::tempdir().unwrap();
    write_tiny_model(plain.path(), &tiny_tensors(), "");
    write_tiny_model(prefixed.path(), &tiny_tensors(), "bert.");
    let texts = ["a cat", "dogs", ""];
    let a = BertEmbedder::from_dir(plain.path())
        .unwrap()
        .embed_blocking(&texts)
        .unwrap();
    let b = BertEmbedder::from_dir(prefixed.path())
        .unwrap()
        .embed_blocking(&texts)
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 3);
    assert!(
        a.iter()
            .all(|v| v.len() == 4 && v.iter().all(|x| x.is_finite()))
    );
}

#[test]
fn missing_tensor_is_a_typed_error_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let missing = "encoder.layer.0.attention.self.key.bias";
    let tensors: Vec<_> = tiny_tensors()
        .into_iter()
        .filter(|(n, _)| n != missing)
        .collect();
    write_tiny_model(dir.path(), &tensors, "");
    match load_error(dir.path()) {
        StylusError::Tensor { path, key, message } => {
            assert_eq!(path, dir.path().join("model.safetensors"));
            assert_eq!(key, missing);
            assert!(message.contains("missing"), "{message}");
        }
        other => panic!("expected a Tensor error, got {other:?}"),
    }
}

#[test]
fn misshaped_and_unexpected_tensors_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = tiny_tensors();
    tensors[0].1 = vec![9, 4];
    write_tiny_model(dir.path(), &tensors, "");
    match load_error(dir.path()) {
        StylusError::Tensor { key, message, .. } => {
            assert_eq!(key, "embeddings.word_embeddings.weight");
            assert!(
                message.contains("expected shape [8, 4], found [9, 4]"),
                "{message}"
            );
        }
        other => panic!("expected a Tensor error, got {other:?}"),
    }

    let mut tensors = tiny_tensors();
    tensors.push(("encoder.layer.1.output.dense.bias".to_owned(), vec![4]));
    tensors.push(("pooler.dense.bias".to_owned(), vec![4])); // known and unused: no error
    write_tiny_model(dir.path(), &tensors, "");
    match load_error(dir.path()) {
        StylusError::Tensor { key, message, .. } => {
            assert_eq!(key, "encoder.layer.1.output.dense.bias");
            assert!(message.contains("unexpected"), "{message}");
        }
        other => panic!("expected a Tensor error, got {other:?}"),
    }
}

#[test]
fn tokenizer_file_that_does_not_parse_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_tensors(), "");
    let tokenizer = dir.path().join("tokenizer.json");

    std::fs::write(&tokenizer, &TINY_TOKENIZER[..300]).unwrap();
    match load_error(dir.path()) {
        StylusError::Json { path, line, .. } => {
            assert_eq!(path, tokenizer);
            assert!(line.is_some());
        }
        other => panic!("expected a Json error, got {other:?}"),
    }

    std::fs::write(&tokenizer, r#"{"model": {"type": "NoSuchModel"}}"#).unwrap();
    match load_error(dir.path()) {
        StylusError::Model { path, message } => {
            assert_eq!(path, tokenizer);
            assert!(message.contains("tokenizers"), "{message}");
        }
        other => panic!("expected a Model error, got {other:?}"),
    }
}

#[test]
fn unsupported_sentence_transformers_modules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &tiny_tensors(), "");
    std::fs::write(
        dir.path().join("modules.json"),
        r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]"#,
    )
    .unwrap();
    assert!(matches!(
        load_error(dir.path()),
        StylusError::UnsupportedFormat { path, .. } if path == dir.path().join("modules.json")
    ));

    std::fs::remove_file(dir.path().join("modules.json")).unwrap();
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true}"#,
    )
    .unwrap();
    assert!(matches!(
        load_error(dir.path()),
        StylusError::UnsupportedFormat { path, .. } if path == dir.path().join("1_Pooling/config.json")
    ));
}

#[test]
fn hugging_face_cache_layout_is_resolved() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--BAAI--bge-tiny");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd\n").unwrap();
    write_tiny_model(&snapshot, &tiny_tensors(), "");

    assert_eq!(
        hf_snapshot_dir(cache.path(), "BAAI/bge-tiny", "main").unwrap(),
        snapshot
    );
    assert_eq!(
        hf_snapshot_dir(cache.path(), "BAAI/bge-tiny", "0123abcd").unwrap(),
        snapshot
    );
    assert!(matches!(
        hf_snapshot_dir(cache.path(), "BAAI/bge-tiny", "v2"),
        Err(StylusError::Model { .. })
    ));
    assert!(matches!(
        hf_snapshot_dir(cache.path(), "BAAI/other", "main"),
        Err(StylusError::Model { .. })
    ));
    let embedder = BertEmbedder::from_dir(&snapshot).unwrap();
    assert!(
        embedder.id().starts_with("bert:mean:16:sha256-"),
        "{}",
        embedder.id()
    );
}
