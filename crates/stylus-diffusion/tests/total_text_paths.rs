//! Every text and file-header path of the diffusion crate is total: the CLIP tokenizer and the
//! A1111 prompt parser on arbitrary Unicode, control and zero-width characters and ~100 KB
//! prompts; the safetensors reader and the LoRA key parser on arbitrary bytes and on
//! well-formed files with hostile keys, dtypes and shapes. No panic, bounded time, typed errors.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use stylus_core::StylusError;
use stylus_diffusion::clip_tokenizer::{BOS_ID, CONTEXT_LENGTH, ClipTokenizer, EOS_ID};
use stylus_diffusion::lora::info::describe;
use stylus_diffusion::lora::{
    ParseOptions, TargetTable, TensorFile, check_base_model, guess_base_model, parse_adapter,
};
use stylus_diffusion::prompt_weights::{Fragment, parse_emphasis, prompt_chunks};
use stylus_test_data::hostile::{
    long_text, repeat_to, safetensors_file, safetensors_like_bytes, text, within,
};

const LIMIT: Duration = Duration::from_secs(10);

fn tokenizer() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| ClipTokenizer::bundled().unwrap())
}

fn sd15() -> &'static TargetTable {
    static TABLE: OnceLock<TargetTable> = OnceLock::new();
    TABLE.get_or_init(TargetTable::sd15)
}

/// Tokenizer invariants: ids in the vocabulary; `encode` is BOS + the first 75 ids + EOS,
/// padded to 77.
fn check_tokenizer(text: &str) -> Result<(), TestCaseError> {
    let tokenizer = tokenizer();
    let ids = within(LIMIT, "tokenize", || tokenizer.tokenize(text));
    let vocab = tokenizer.vocab_size() as u32;
    prop_assert!(ids.iter().all(|&id| id < vocab));
    let encoded = within(LIMIT, "encode", || tokenizer.encode(text));
    prop_assert_eq!(encoded.len(), CONTEXT_LENGTH);
    prop_assert_eq!(encoded[0], BOS_ID);
    let kept = ids.len().min(CONTEXT_LENGTH - 2);
    prop_assert_eq!(&encoded[1..=kept], &ids[..kept]);
    prop_assert_eq!(encoded[kept + 1], EOS_ID);
    Ok(())
}

/// Parser invariants: never empty; weights finite and positive unless a weight in the prompt
/// says otherwise; every chunk is 77 ids and 77 weights framed by BOS/EOS.
fn check_prompt(prompt: &str) -> Result<(), TestCaseError> {
    let fragments = within(LIMIT, "parse_emphasis", || parse_emphasis(prompt));
    prop_assert!(!fragments.is_empty());
    for fragment in &fragments {
        if let Fragment::Text { weight, .. } = fragment {
            prop_assert!(!weight.is_nan() || prompt.contains(':'), "{fragments:?}");
        }
    }
    let chunks = within(LIMIT, "prompt_chunks", || {
        prompt_chunks(tokenizer(), prompt)
    });
    prop_assert!(!chunks.is_empty());
    for chunk in &chunks {
        prop_assert_eq!(chunk.ids.len(), CONTEXT_LENGTH);
        prop_assert_eq!(chunk.weights.len(), CONTEXT_LENGTH);
        prop_assert_eq!(chunk.ids[0], BOS_ID);
        prop_assert_eq!(chunk.ids[CONTEXT_LENGTH - 1], EOS_ID);
    }
    Ok(())
}

/// The safetensors reader and everything behind it: a value or a typed error, never a panic.
fn check_file(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let path = Path::new("hostile.safetensors");
    let file = match TensorFile::from_bytes(path, bytes.clone()) {
        Ok(file) => file,
        Err(error) => {
            prop_assert!(
                matches!(error, StylusError::Safetensors { .. }),
                "{error:?}"
            );
            return Ok(());
        }
    };
    let _ = guess_base_model(&file);
    let _ = check_base_model(&file);
    for key in file.tensors().keys() {
        let _ = file.f32(key);
        let _ = file.scalar(key);
    }
    for strict in [false, true] {
        let parsed = within(LIMIT, "parse_adapter", || {
            parse_adapter(&file, sd15(), ParseOptions { strict })
        });
        if let Ok(adapter) = parsed {
            for module in &adapter.modules {
                prop_assert!(module.target < sd15().modules().len(), "{module:?}");
            }
        }
    }
    // The same bytes on disk, through `stylus info`'s reader.
    let dir = tempfile::tempdir().unwrap();
    let on_disk = dir.path().join("x.safetensors");
    std::fs::write(&on_disk, &bytes).unwrap();
    let _ = describe(&on_disk);
    Ok(())
}

proptest! {
    #![proptest_config(stylus_test_data::hostile::config(256))]

    #[test]
    fn clip_tokenizer_is_total(text in text(64)) {
        check_tokenizer(&text)?;
    }

    #[test]
    fn a1111_prompt_parser_is_total(prompt in text(64)) {
        check_prompt(&prompt)?;
    }
}

proptest! {
    #![proptest_config(stylus_test_data::hostile::config(128))]

    #[test]
    fn safetensors_reader_is_total_on_arbitrary_bytes(bytes in safetensors_like_bytes()) {
        check_file(bytes)?;
    }

    #[test]
    fn lora_key_parser_is_total_on_hostile_files(bytes in safetensors_file()) {
        check_file(bytes)?;
    }
}

proptest! {
    #![proptest_config(stylus_test_data::hostile::config(8))]

    #[test]
    fn long_prompts_finish(prompt in long_text(100_000)) {
        check_tokenizer(&prompt)?;
        check_prompt(&prompt)?;
    }
}

/// One word of `n` pseudo-random letters (the BPE loop's worst case: a merge rank per scan).
fn random_letters(n: usize) -> String {
    let mut x: u64 = 12345;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (b'a' + ((x >> 33) % 26) as u8) as char
        })
        .collect()
}

/// Worst cases of the tokenizer and the emphasis parser: one 100 KB word, deep or unclosed
/// brackets, many special tokens, many BREAKs and weights.
#[test]
fn pathological_long_prompts_finish() {
    let n = 100_000;
    for prompt in [
        "a".repeat(n),
        (0..n / 2)
            .map(|i| ((b'a' + (i * 7 % 26) as u8) as char).to_string() + "b")
            .collect(),
        random_letters(n),
        "丸".repeat(n / 3),
        "(".repeat(n),
        "(a".repeat(n / 2),
        "[a(".repeat(n / 3),
        format!("{}x{}", "(".repeat(n / 2), ")".repeat(n / 2)),
        repeat_to("(a:1.1)", n),
        repeat_to("x:1)", n),
        repeat_to("<|endoftext|>", n),
        repeat_to("a BREAK ", n),
        repeat_to(", ", n),
        repeat_to("\\(", n),
    ] {
        check_tokenizer(&prompt).unwrap();
        check_prompt(&prompt).unwrap();
    }
}
