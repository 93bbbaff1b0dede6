//! Hostile text for totality tests: proptest strategies over arbitrary Unicode mixed with the
//! characters and words our text paths treat specially (control and zero-width characters,
//! quotes, brackets, `<lora:...>` tags, verb endings on CJK stems), long inputs, and a fixed set
//! of hostile prompts for the CLI.

use std::time::{Duration, Instant};

use proptest::prelude::*;

/// Characters that are invisible, reorder text, or are otherwise easy to mishandle.
pub const ODD_CHARS: &[char] = &[
    '\0',
    '\u{1}',
    '\u{7}',
    '\u{8}',
    '\t',
    '\n',
    '\u{b}',
    '\u{c}',
    '\r',
    '\u{1b}',
    '\u{7f}',
    '\u{80}',
    '\u{85}',
    '\u{9f}',
    '\u{a0}',
    '\u{ad}',
    '\u{200b}',
    '\u{200c}',
    '\u{200d}',
    '\u{200e}',
    '\u{200f}',
    '\u{2028}',
    '\u{2029}',
    '\u{202e}',
    '\u{2060}',
    '\u{2066}',
    '\u{feff}',
    '\u{fffd}',
    '\u{fe0f}',
    '\u{301}',
    '\u{308}',
    '\u{e000}',
    '\u{10ffff}',
];

/// Characters with a meaning in prompts, HTML, JSON or TOML.
pub const SYNTAX_CHARS: &[char] = &[
    '"', '\'', '\u{201c}', '\u{201d}', '\u{2019}', '(', ')', '[', ']', '{', '}', '<', '>', ':',
    '\\', ',', '.', ';', '-', '&', '#', '=', '/', '!', '?', '*', '_', '|', '~', '`', ' ',
];

/// Words and fragments the parsers look for, in several scripts.
pub const WORDS: &[&str] = &[
    "a",
    "the",
    "of",
    "in",
    "at",
    "on",
    "with",
    "and",
    "style",
    "in the style of",
    "painting",
    "riding",
    "sits",
    "cat",
    "night",
    "rain",
    "BREAK",
    "masterpiece",
    "丸ed",
    "ッing",
    "丸丸ed",
    "ééing",
    "東京",
    "猫",
    "кошка",
    "قطة",
    "बिल्ली",
    "🐈",
    "👩‍👩‍👧",
    "🏳️‍🌈",
    "e\u{301}",
    "<lora:",
    "<lora:x:0.7>",
    "<lora:a:b:c>",
    "<lyco:x:1>",
    "(cat:1.3)",
    "((x))",
    "[y]",
    "(x:1e309)",
    "(x:-0)",
    "(x:NaN)",
    "\\(",
    "\\",
    "<p>",
    "</p>",
    "<script>",
    "</script>",
    "<!--",
    "-->",
    "<br/>",
    "&amp;",
    "&#0;",
    "&#x110000;",
    "&nbsp;",
    "weight 0.6",
    "0.4-0.7",
    "1e999",
    "-1",
    "\"",
    "\"\"",
    "[[x]]",
    "a = 1",
    "[retriever]",
    "{\"id\": 1}",
];

/// One piece of hostile text: any character, an odd or syntax character, or a special word.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<char>().prop_map(String::from),
        2 => proptest::sample::select(ODD_CHARS).prop_map(String::from),
        2 => proptest::sample::select(SYNTAX_CHARS).prop_map(String::from),
        3 => proptest::sample::select(WORDS).prop_map(str::to_owned),
        2 => "[a-zA-Z]{1,12}",
    ]
}

/// Hostile text of up to `max_pieces` pieces.
pub fn text(max_pieces: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(piece(), 0..=max_pieces).prop_map(|p| p.concat())
}

/// Hostile text of at least `min_bytes` bytes: a random hostile chunk repeated, or random
/// pieces throughout (half the cases each).
pub fn long_text(min_bytes: usize) -> impl Strategy<Value = String> {
    let count = (min_bytes / 6).max(1);
    prop_oneof![
        text(24).prop_map(move |chunk| repeat_to(&chunk, min_bytes)),
        proptest::collection::vec(piece(), count..=count).prop_map(move |pieces| {
            let mut out = pieces.concat();
            // Pieces are never empty, so this ends.
            for piece in pieces.iter().cycle() {
                if out.len() >= min_bytes {
                    break;
                }
                out.push_str(piece);
            }
            out
        }),
    ]
}

/// `chunk` repeated until the text has at least `min_bytes` bytes (`x` for an empty chunk).
pub fn repeat_to(chunk: &str, min_bytes: usize) -> String {
    let chunk = if chunk.is_empty() { "x" } else { chunk };
    chunk.repeat(min_bytes.div_ceil(chunk.len()))
}

/// Arbitrary bytes, biased towards a little-endian length prefix and JSON-looking content, as a
/// safetensors header reader sees them.
pub fn safetensors_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let json_ish = text(40).prop_map(String::into_bytes);
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..256)).prop_map(|(n, rest)| {
            let mut bytes = n.to_le_bytes().to_vec();
            bytes.extend(rest);
            bytes
        }),
        (
            json_ish,
            0u64..16,
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(json, slack, tail)| {
                let mut bytes = (json.len() as u64 + slack).to_le_bytes().to_vec();
                bytes.extend(json);
                bytes.extend(tail);
                bytes
            }),
    ]
}

/// The suites' proptest settings: `cases` cases, no regression files written into the source
/// tree (a failure prints its minimal input; add it to a unit test).
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs `f` and fails the test when it takes longer than `limit` (a quadratic blowup on long
/// input, not machine noise: limits are seconds where the work is milliseconds).
pub fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took <= limit, "{what} took {took:?} (limit {limit:?})");
    out
}

/// A fixed list of hostile prompts for end-to-end runs: mixed scripts, emoji (ZWJ sequences,
/// flags, skin tones), zero-width, bidi and control characters, prompt syntax, and lines of
/// about 100 KB. No line contains `\n` or `\r` (one prompt per line), and none is blank.
pub fn hostile_prompts() -> Vec<String> {
    let mut prompts: Vec<String> = [
        "a cat riding a horse in the style of Van Gogh",
        "东京的夜晚, a neon city at night, ネオン街, 서울의 밤",
        "кошка на крыше под дождём, قطة على السطح, बिल्ली",
        "👩‍👩‍👧 family portrait 🏳️‍🌈 🇯🇵 👍🏽 🐈‍⬛ in a park",
        "zero\u{200b}width\u{200c}join\u{200d}er \u{2060}word\u{feff} joiner",
        "\u{202e}reversed text\u{202c} and \u{2066}isolate\u{2069}",
        "bell\u{7}back\u{8}space\u{1b}[31mred\u{1b}[0m nul\u{0} del\u{7f}",
        "c1\u{85}next\u{9f}line \u{2028} \u{2029} separators",
        "\u{200b}",
        "\u{feff}\u{feff}\u{feff}",
        "丸ed ッing 丸丸ed ッッing ééing a 丸ed cat ッing in the rain",
        "(masterpiece:1.2), ((best quality)), [[blurry]], (cat:1e309) (dog:NaN) \\( \\)",
        "<lora:add_detail:0.6> <lora:unclosed <lora::> <lyco:x:1> a castle BREAK at night",
        "\"unclosed quote about a cat “curly” and ”backwards“ \"\" \"",
        "<p>html <b>in</b> a prompt</p> &amp; &#0; &#x110000; &nbsp; <script>x</script>",
        "e\u{301}\u{301}\u{301}\u{301}\u{301} combining marks z\u{35c}\u{35d}\u{35e}\u{35f}",
        "\u{e000}\u{f8ff}\u{10ffff} private use and the last code point",
        "a",
        ",,,,;;;;....",
    ]
    .map(str::to_owned)
    .to_vec();
    // Long lines: about 100 KB each.
    for chunk in [
        "a red fox in the snow, ",
        "丸ed ッing 東京 🐈 ",
        "\u{200b}\u{200d}\u{feff}a",
        "((x:1.1)) [y] <lora:z:0.5> ",
        "\"q\" ",
        "(",
        "word",
    ] {
        prompts.push(repeat_to(chunk, 100_000));
    }
    prompts
}

/// Key pieces of LoRA files (kohya, LyCORIS, PEFT/diffusers, LDM names, embeddings).
pub const LORA_KEY_PIECES: &[&str] = &[
    "lora_unet_",
    "lora_te_",
    "lora_te1_",
    "lora_te2_",
    "down_blocks_0_attentions_0_",
    "up_blocks_3_resnets_2_",
    "mid_block_",
    "input_blocks_4_1_",
    "output_blocks_11_",
    "transformer_blocks_0_",
    "attn1_to_k",
    "attn2_to_v",
    "proj_in",
    "conv1",
    "conv_shortcut",
    "text_model_encoder_layers_0_self_attn_k_proj",
    "mlp_fc1",
    "time_emb_proj",
    ".lora_down.weight",
    ".lora_up.weight",
    ".lora_mid.weight",
    ".alpha",
    ".dora_scale",
    ".hada_w1_a",
    ".hada_w1_b",
    ".hada_w2_a",
    ".hada_w2_b",
    ".hada_t1",
    ".lokr_w1",
    ".lokr_w2",
    ".lokr_w1_a",
    ".lokr_w2_b",
    ".lokr_t2",
    ".diff",
    ".diff_b",
    ".on_input",
    ".weight",
    ".bias",
    "unet.",
    "text_encoder.",
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora.down.weight",
    ".lora.up.weight",
    "unet.down_blocks.0.attentions.0.",
    "to_q",
    "processor.",
    "model.diffusion_model.",
    "bundle_emb.",
    "unet:0:down",
    "text_encoder:1:up",
    "_",
    ".",
    "",
    "丸",
    "\u{0}",
    "\u{200b}",
];

/// Tensor dtypes as safetensors names them, and a few it does not.
pub const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "f32", "X", "",
];

/// One tensor entry of a generated header: key, dtype, shape.
type TensorSpec = (String, &'static str, Vec<usize>);

/// Real SD 1.5 module names (kohya spelling) and the suffixes of every format.
const KOHYA_MODULES: &[&str] = &[
    "lora_unet_down_blocks_0_attentions_0_proj_in",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k",
    "lora_unet_up_blocks_3_resnets_2_conv2",
    "lora_unet_mid_block_resnets_0_time_emb_proj",
    "lora_unet_down_blocks_1_downsamplers_0_conv",
    "lora_te_text_model_encoder_layers_0_self_attn_k_proj",
    "lora_te_text_model_encoder_layers_11_mlp_fc2",
    "lora_unet_input_blocks_4_1_proj_in",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
];
const SUFFIXES: &[&str] = &[
    ".lora_down.weight",
    ".lora_up.weight",
    ".lora_mid.weight",
    ".alpha",
    ".dora_scale",
    ".hada_w1_a",
    ".hada_w1_b",
    ".hada_w2_a",
    ".hada_w2_b",
    ".hada_t1",
    ".hada_t2",
    ".lokr_w1",
    ".lokr_w2",
    ".lokr_w1_a",
    ".lokr_w1_b",
    ".lokr_w2_a",
    ".lokr_w2_b",
    ".lokr_t2",
    ".diff",
    ".diff_b",
    ".on_input",
    ".weight",
    ".bias",
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora.down.weight",
    ".lora.up.weight",
    ".scale",
];

fn lora_key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (proptest::sample::select(KOHYA_MODULES), proptest::sample::select(SUFFIXES))
            .prop_map(|(module, suffix)| format!("{module}{suffix}")),
        3 => proptest::collection::vec(proptest::sample::select(LORA_KEY_PIECES), 1..7)
            .prop_map(|pieces| pieces.concat()),
        1 => text(6),
    ]
}

fn tensor_spec() -> impl Strategy<Value = TensorSpec> {
    let dim = prop_oneof![
        6 => 0usize..9,
        2 => proptest::sample::select(&[4usize, 320, 768][..]),
        1 => Just(usize::MAX),
        1 => Just(1usize << 40),
    ];
    (
        lora_key(),
        proptest::sample::select(DTYPES),
        proptest::collection::vec(dim, 0..5),
    )
}

/// Bytes of a safetensors file with hostile keys, dtypes, shapes and metadata: usually a
/// well-formed layout (offsets follow the shapes when their size is small), sometimes with
/// offsets that do not, sometimes truncated.
pub fn safetensors_file() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(tensor_spec(), 0..10),
        proptest::collection::vec((text(4), text(8)), 0..4),
        0u8..8,
        any::<u16>(),
    )
        .prop_map(|(tensors, metadata, how, noise)| {
            write_safetensors(&tensors, &metadata, how, noise)
        })
}

fn dtype_size(dtype: &str) -> usize {
    match dtype {
        "F64" | "I64" => 8,
        "F32" | "I32" => 4,
        "F16" | "BF16" => 2,
        _ => 1,
    }
}

/// Serializes a header by hand (serde_json would escape nothing we care about either way).
fn write_safetensors(
    tensors: &[TensorSpec],
    metadata: &[(String, String)],
    how: u8,
    noise: u16,
) -> Vec<u8> {
    let quote = |s: &str| {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    };
    let mut entries = Vec::new();
    if !metadata.is_empty() {
        let fields: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
            .collect();
        entries.push(format!("\"__metadata__\":{{{}}}", fields.join(",")));
    }
    let mut offset = 0usize;
    for (i, (key, dtype, shape)) in tensors.iter().enumerate() {
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX);
        let size = count.saturating_mul(dtype_size(dtype));
        let size = if size > 1 << 16 || how == 1 {
            // Too big to write: declare a small span, so offsets disagree with the shape.
            usize::from(noise % 64)
        } else {
            size
        };
        let end = if how == 2 && i == 0 {
            offset + 1
        } else {
            offset + size
        };
        let shape: Vec<String> = shape.iter().map(usize::to_string).collect();
        entries.push(format!(
            "{}:{{\"dtype\":{},\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            quote(key),
            quote(dtype),
            shape.join(",")
        ));
        offset = end;
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    if how == 3 {
        header.extend(std::iter::repeat_n(b' ', usize::from(noise % 8)));
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(&header);
    bytes.extend(std::iter::repeat_n(0u8, offset.min(1 << 20)));
    match how {
        4 => bytes.truncate(usize::from(noise) % (bytes.len() + 1)),
        5 if !bytes.is_empty() => {
            let i = usize::from(noise) % bytes.len();
            bytes[i] ^= 0x5a;
        }
        _ => {}
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_prompts_are_one_non_blank_line_each() {
        let prompts = hostile_prompts();
        assert!(prompts.len() > 20);
        for p in &prompts {
            assert!(!p.contains(['\n', '\r']), "{p:?}");
            assert!(!p.trim().is_empty() || p.contains('\u{200b}') || p.contains('\u{feff}'));
        }
        assert!(prompts.iter().filter(|p| p.len() >= 100_000).count() >= 5);
    }

    #[test]
    fn repeat_to_reaches_the_length() {
        assert_eq!(repeat_to("", 3), "xxx");
        assert!(repeat_to("丸", 10).len() >= 10);
    }

    proptest! {
        #![proptest_config(config(16))]
        #[test]
        fn long_text_is_long(s in long_text(1000)) {
            prop_assert!(s.len() >= 1000);
        }
    }
}
