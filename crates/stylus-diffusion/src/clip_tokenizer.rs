//! The CLIP BPE tokenizer of Stable Diffusion 1.x, id-for-id equal to transformers'
//! `CLIPTokenizer` as diffusers uses it (fixture test: `tests/clip_tokenizer_parity.rs`).
//!
//! Text pipeline (transformers' CLIP tokenizer, the `tokenizers`-backed one):
//! 1. special tokens `<|startoftext|>` / `<|endoftext|>` written in the text map to their ids;
//! 2. Unicode NFC, every run of whitespace becomes one space, lower-casing character by character
//!    (`char::to_lowercase`, as `tokenizers` does: a final `Σ` becomes `σ`, not `ς`);
//! 3. words are the matches of CLIP's pattern (`'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`),
//!    everything else is dropped;
//! 4. each word's UTF-8 bytes are mapped to GPT-2's printable byte alphabet, `</w>` is appended to
//!    the last symbol and the BPE merges are applied by rank.
//!
//! Differences from open_clip / OpenAI's `SimpleTokenizer` (we follow transformers): open_clip runs
//! `ftfy.fix_text` and unescapes HTML entities twice (`&amp;` -> `&`), transformers does neither,
//! so `&amp;` stays three words (`&`, `amp`, `;`) here; open_clip also strips curly quotes through
//! ftfy. Prompts written with plain ASCII punctuation tokenize the same in both.
//!
//! The vocabulary ships with the crate (`assets/clip/`, OpenAI's MIT-licensed BPE merges, see
//! `assets/clip/README.md`), so single-file checkpoints work offline; a diffusers folder's
//! `tokenizer/vocab.json` + `merges.txt` are used when present.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use regex::Regex;
use stylus_core::{Result, StylusError};
use unicode_normalization::UnicodeNormalization;

/// The SD 1.x context length: BOS + 75 tokens + EOS.
pub const CONTEXT_LENGTH: usize = 77;
/// Id of `<|startoftext|>` in the CLIP vocabulary.
pub const BOS_ID: u32 = 49406;
/// Id of `<|endoftext|>` in the CLIP vocabulary (also SD 1.x's padding token).
pub const EOS_ID: u32 = 49407;

const BOS_TOKEN: &str = "<|startoftext|>";
const EOS_TOKEN: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";
/// Merges used by CLIP out of OpenAI's BPE file: 49408 tokens - 256 bytes - 256 bytes + `</w>`
/// - 2 special tokens.
const CLIP_MERGES: usize = 49152 - 256 - 2;
const WORD_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";
const BUNDLED_MERGES: &[u8] = include_bytes!("../assets/clip/clip_bpe_merges.txt.gz");
const BUNDLED_NAME: &str = "<bundled>/assets/clip/clip_bpe_merges.txt.gz";

/// CLIP's byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    /// Token string -> id.
    vocab: HashMap<String, u32>,
    /// (left id, right id) -> (merge rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The printable character each byte is written as (GPT-2's `bytes_to_unicode`).
    byte_chars: [char; 256],
    words: Regex,
    whitespace: Regex,
    pad_id: u32,
}

impl ClipTokenizer {
    /// The tokenizer with the vocabulary bundled in the crate (OpenAI's CLIP BPE merges).
    pub fn bundled() -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(BUNDLED_MERGES)
            .read_to_string(&mut text)
            .map_err(|e| StylusError::model(BUNDLED_NAME, format!("cannot decompress: {e}")))?;
        Self::from_openai_bpe(&text, Path::new(BUNDLED_NAME))
    }

    /// Builds the vocabulary from an OpenAI BPE merges file (`bpe_simple_vocab_16e6.txt`): the 256
    /// byte symbols, the same with `</w>`, one token per merge (the first 48,894 lines after the
    /// version header), then the two special tokens: exactly how CLIP's `vocab.json` was made.
    pub fn from_openai_bpe(text: &str, path: &Path) -> Result<Self> {
        let byte_chars = bytes_to_unicode();
        let merge_lines: Vec<(usize, &str)> = text
            .split('\n')
            .enumerate()
            .skip(1)
            .take(CLIP_MERGES)
            .collect();
        if merge_lines.len() < CLIP_MERGES {
            return Err(StylusError::model(
                path,
                format!(
                    "CLIP BPE file has {} merges, expected at least {CLIP_MERGES}",
                    merge_lines.len()
                ),
            ));
        }
        // OpenAI's table lists the printable bytes first (their characters are themselves), then
        // the remapped ones (characters from U+0100 up): sorting by character gives that order.
        let mut symbols = byte_chars;
        symbols.sort_unstable();
        let mut tokens: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
        tokens.extend(symbols.iter().map(|c| format!("{c}{END_OF_WORD}")));
        let mut pairs = Vec::with_capacity(CLIP_MERGES);
        for (index, line) in merge_lines {
            let (left, right) = parse_merge(line, path, index + 1)?;
            tokens.push(format!("{left}{right}"));
            pairs.push((left.to_string(), right.to_string(), index + 1));
        }
        tokens.push(BOS_TOKEN.to_string());
        tokens.push(EOS_TOKEN.to_string());
        let vocab: HashMap<String, u32> = tokens
            .into_iter()
            .enumerate()
            .map(|(id, token)| (token, id as u32))
            .collect();
        Self::assemble(vocab, &pairs, path, EOS_TOKEN)
    }

    /// Loads a Hugging Face tokenizer folder (`vocab.json`, `merges.txt`, and the padding token
    /// from `special_tokens_map.json` when present, else `<|endoftext|>`).
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let vocab_text = read_text(&vocab_path)?;
        let vocab: HashMap<String, u32> =
            serde_json::from_str(&vocab_text).map_err(|e| StylusError::Json {
                path: vocab_path.clone(),
                line: Some(e.line()),
                message: format!("expected an object of token -> id: {e}"),
                source: Some(Box::new(e)),
            })?;
        let merges_text = read_text(&merges_path)?;
        let mut pairs = Vec::new();
        for (index, line) in merges_text.lines().enumerate() {
            if (index == 0 && line.starts_with("#version")) || line.trim().is_empty() {
                continue;
            }
            let (left, right) = parse_merge(line, &merges_path, index + 1)?;
            pairs.push((left.to_string(), right.to_string(), index + 1));
        }
        let pad_token = read_pad_token(&dir.join("special_tokens_map.json"))?
            .unwrap_or_else(|| EOS_TOKEN.to_string());
        let tokenizer = Self::assemble(vocab, &pairs, &merges_path, &pad_token)?;
        for (token, id) in [(BOS_TOKEN, BOS_ID), (EOS_TOKEN, EOS_ID)] {
            if tokenizer.vocab.get(token) != Some(&id) {
                return Err(StylusError::model(
                    &vocab_path,
                    format!("`{token}` must have id {id} in a CLIP vocabulary"),
                ));
            }
        }
        Ok(tokenizer)
    }

    /// The folder's tokenizer when `dir/tokenizer/vocab.json` exists, else the bundled one.
    pub fn for_checkpoint(checkpoint_dir: Option<&Path>) -> Result<Self> {
        match checkpoint_dir.map(|d| d.join("tokenizer")) {
            Some(dir) if dir.join("vocab.json").is_file() => Self::from_folder(&dir),
            _ => Self::bundled(),
        }
    }

    fn assemble(
        vocab: HashMap<String, u32>,
        pairs: &[(String, String, usize)],
        path: &Path,
        pad_token: &str,
    ) -> Result<Self> {
        let byte_chars = bytes_to_unicode();
        for c in byte_chars {
            for token in [c.to_string(), format!("{c}{END_OF_WORD}")] {
                if !vocab.contains_key(&token) {
                    return Err(StylusError::model(
                        path,
                        format!("vocabulary lacks the byte symbol `{token}`"),
                    ));
                }
            }
        }
        let mut merges = HashMap::with_capacity(pairs.len());
        for (rank, (left, right, line)) in pairs.iter().enumerate() {
            let id_of = |token: &str| {
                vocab.get(token).copied().ok_or_else(|| {
                    StylusError::model(
                        path,
                        format!("line {line}: merge token `{token}` is not in the vocabulary"),
                    )
                })
            };
            let key = (id_of(left)?, id_of(right)?);
            let merged = id_of(&format!("{left}{right}"))?;
            // A repeated pair keeps its first (best) rank, as in the reference.
            merges.entry(key).or_insert((rank as u32, merged));
        }
        let pad_id = *vocab.get(pad_token).ok_or_else(|| {
            StylusError::model(
                path,
                format!("padding token `{pad_token}` is not in the vocabulary"),
            )
        })?;
        Ok(Self {
            vocab,
            merges,
            byte_chars,
            words: Regex::new(WORD_PATTERN).expect("CLIP word pattern is valid"),
            whitespace: Regex::new(r"\s+").expect("whitespace pattern is valid"),
            pad_id,
        })
    }

    /// Writes the vocabulary as a Hugging Face tokenizer folder (`vocab.json`, `merges.txt`), the
    /// layout [`ClipTokenizer::from_folder`] reads and diffusers saves next to a pipeline.
    pub fn write_folder(&self, dir: &Path) -> Result<()> {
        let mut tokens: Vec<(&String, u32)> = self.vocab.iter().map(|(t, &id)| (t, id)).collect();
        tokens.sort_by_key(|&(_, id)| id);
        let vocab: serde_json::Map<String, serde_json::Value> = tokens
            .iter()
            .map(|&(t, id)| (t.clone(), serde_json::Value::from(id)))
            .collect();
        let token_of: HashMap<u32, &String> = tokens.iter().map(|&(t, id)| (id, t)).collect();
        let mut merges: Vec<(u32, u32, u32)> = self
            .merges
            .iter()
            .map(|(&(l, r), &(rank, _))| (rank, l, r))
            .collect();
        merges.sort_unstable();
        let mut merges_text = String::from("#version: 0.2\n");
        for (_, left, right) in merges {
            merges_text.push_str(&format!("{} {}\n", token_of[&left], token_of[&right]));
        }
        std::fs::create_dir_all(dir).map_err(|e| StylusError::io(dir, e))?;
        let vocab_path = dir.join("vocab.json");
        let vocab_json = serde_json::to_string(&vocab).expect("a string map serializes");
        std::fs::write(&vocab_path, vocab_json).map_err(|e| StylusError::io(&vocab_path, e))?;
        let merges_path = dir.join("merges.txt");
        std::fs::write(&merges_path, merges_text).map_err(|e| StylusError::io(&merges_path, e))
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The padding id (`<|endoftext|>` for SD 1.x).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of one token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// The BPE ids of `text`, without BOS/EOS, untruncated.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for (piece, special) in split_special_tokens(text) {
            if let Some(id) = special {
                ids.push(id);
                continue;
            }
            let normalized: String = piece.nfc().collect();
            // Character by character, as `tokenizers` lower-cases: no final-sigma rule.
            let normalized: String = self
                .whitespace
                .replace_all(&normalized, " ")
                .chars()
                .flat_map(char::to_lowercase)
                .collect();
            for word in self.words.find_iter(&normalized) {
                self.bpe_word(word.as_str(), &mut ids);
            }
        }
        ids
    }

    /// What the text encoder sees: BOS, at most 75 tokens, EOS, padded with the padding id to 77.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(CONTEXT_LENGTH);
        ids.push(BOS_ID);
        ids.extend(self.tokenize(text).into_iter().take(CONTEXT_LENGTH - 2));
        ids.push(EOS_ID);
        ids.resize(CONTEXT_LENGTH, self.pad_id);
        ids
    }

    /// Appends the BPE ids of one word (a match of the word pattern).
    fn bpe_word(&self, word: &str, out: &mut Vec<u32>) {
        let bytes = word.as_bytes();
        let Some((&last, rest)) = bytes.split_last() else {
            return;
        };
        let mut symbols: Vec<u32> = rest
            .iter()
            .map(|&b| self.vocab[self.byte_chars[b as usize].to_string().as_str()])
            .collect();
        let last_symbol = format!("{}{END_OF_WORD}", self.byte_chars[last as usize]);
        symbols.push(self.vocab[last_symbol.as_str()]);
        self.merge_symbols(&mut symbols);
        out.extend(symbols);
    }

    /// OpenAI's BPE loop: repeatedly merge every occurrence of the best-ranked adjacent pair, left
    /// to right. Run as passes over a heap of candidate pairs (rank, position) on a linked list,
    /// so a long word costs O(n log n) instead of one scan of the word per merge rank (a 12 KB
    /// word took 20 s). Pairs a pass creates wait for the next pass, as in the original loop.
    fn merge_symbols(&self, symbols: &mut Vec<u32>) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        const NONE: usize = usize::MAX;
        let n = symbols.len();
        if n < 2 {
            return;
        }
        let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.checked_sub(1).unwrap_or(NONE)).collect();
        let mut alive = vec![true; n];
        // (rank, left position, left id, right id): left-most first within a rank.
        let mut heap = BinaryHeap::new();
        let candidate = |symbols: &[u32], left: usize, right: usize| {
            self.merges
                .get(&(symbols[left], symbols[right]))
                .map(|&(rank, _)| Reverse((rank, left, symbols[left], symbols[right])))
        };
        heap.extend((0..n - 1).filter_map(|i| candidate(symbols, i, i + 1)));
        let mut pending = Vec::new();
        let mut pass_rank = None;
        loop {
            let Some(&Reverse((rank, left, left_id, right_id))) = heap.peek() else {
                if pending.is_empty() {
                    break;
                }
                heap.extend(pending.drain(..));
                continue;
            };
            if pass_rank != Some(rank) && !pending.is_empty() {
                // The pass is over: its new pairs become candidates.
                heap.extend(pending.drain(..));
                continue;
            }
            heap.pop();
            pass_rank = Some(rank);
            let right = next[left];
            if !alive[left]
                || right == NONE
                || symbols[left] != left_id
                || symbols[right] != right_id
            {
                continue; // a stale pair: one side was merged since
            }
            symbols[left] = self.merges[&(left_id, right_id)].1;
            alive[right] = false;
            next[left] = next[right];
            if next[right] != NONE {
                prev[next[right]] = left;
            }
            if prev[left] != NONE {
                pending.extend(candidate(symbols, prev[left], left));
            }
            if next[left] != NONE {
                pending.extend(candidate(symbols, left, next[left]));
            }
        }
        let mut i = 0;
        let mut merged = Vec::with_capacity(n);
        while i != NONE {
            merged.push(symbols[i]);
            i = next[i];
        }
        *symbols = merged;
    }
}

/// Splits `text` around literal special tokens; special pieces carry their id. One scan over
/// the `<|` marks (searching the rest of the text for each token after every match was
/// quadratic in a prompt full of them).
fn split_special_tokens(text: &str) -> Vec<(&str, Option<u32>)> {
    let mut pieces = Vec::new();
    let (mut piece_start, mut from) = (0, 0);
    while let Some(found) = text[from..].find("<|") {
        let at = from + found;
        let special = [(BOS_TOKEN, BOS_ID), (EOS_TOKEN, EOS_ID)]
            .into_iter()
            .find(|(token, _)| text[at..].starts_with(token));
        match special {
            Some((token, id)) => {
                pieces.push((&text[piece_start..at], None));
                pieces.push((token, Some(id)));
                piece_start = at + token.len();
                from = piece_start;
            }
            None => from = at + 2,
        }
    }
    pieces.push((&text[piece_start..], None));
    pieces
}

/// GPT-2's reversible byte -> printable character table.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let code = if printable(b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(code).expect("code points below 512 are valid");
    }
    table
}

fn parse_merge<'a>(line: &'a str, path: &Path, line_number: usize) -> Result<(&'a str, &'a str)> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(left), Some(right), None) if !left.is_empty() && !right.is_empty() => {
            Ok((left, right))
        }
        _ => Err(StylusError::model(
            path,
            format!("line {line_number}: expected a merge `LEFT RIGHT`, got {line:?}"),
        )),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| StylusError::io(path, e))
}

/// The `pad_token` of a `special_tokens_map.json` (a string or `{"content": ...}`).
fn read_pad_token(path: &Path) -> Result<Option<String>> {
    if !path.is_file() {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_str(&read_text(path)?).map_err(|e| StylusError::Json {
            path: path.to_path_buf(),
            line: Some(e.line()),
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
    let pad = match value.get("pad_token") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(v) => match v.get("content").and_then(|c| c.as_str()) {
            Some(s) => Some(s.to_string()),
            None => {
                return Err(StylusError::Json {
                    path: path.to_path_buf(),
                    line: None,
                    message: "`pad_token` is neither a string nor {\"content\": ...}".into(),
                    source: None,
                });
            }
        },
    };
    Ok(pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenAI's loop as written (one scan per merge rank): the reference for `merge_symbols`.
    fn merge_by_passes(tokenizer: &ClipTokenizer, mut symbols: Vec<u32>) -> Vec<u32> {
        loop {
            let best = symbols
                .windows(2)
                .filter_map(|w| tokenizer.merges.get(&(w[0], w[1])))
                .min_by_key(|(rank, _)| *rank);
            let Some(&(rank, merged)) = best else {
                return symbols;
            };
            let mut next = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len()
                    && tokenizer
                        .merges
                        .get(&(symbols[i], symbols[i + 1]))
                        .map(|m| m.0)
                        == Some(rank)
                {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(symbols[i]);
                    i += 1;
                }
            }
            symbols = next;
        }
    }

    #[test]
    fn heap_merges_equal_the_pass_loop_and_long_words_are_fast() {
        let tokenizer = ClipTokenizer::bundled().unwrap();
        let mut x: u64 = 7;
        let mut random_word = |len: usize, alphabet: &[u8]| -> Vec<u32> {
            (0..len)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let b = alphabet[(x >> 33) as usize % alphabet.len()];
                    tokenizer.vocab[tokenizer.byte_chars[b as usize].to_string().as_str()]
                })
                .collect()
        };
        for len in [0, 1, 2, 3, 5, 8, 13, 40, 200] {
            for alphabet in [
                &b"ab"[..],
                b"aaab",
                b"abcdefghijklmnopqrstuvwxyz",
                b"etaoin sh",
            ] {
                let word = random_word(len, alphabet);
                let mut fast = word.clone();
                tokenizer.merge_symbols(&mut fast);
                assert_eq!(
                    fast,
                    merge_by_passes(&tokenizer, word),
                    "{len} {alphabet:?}"
                );
            }
        }
        // A 100 KB word of random letters: 412 s with a scan per merge rank, now well under 5 s.
        let word: String = (0..100_000)
            .map(|i| (b'a' + ((i * 7919 + i / 26 * 31) % 26) as u8) as char)
            .collect();
        let start = std::time::Instant::now();
        assert!(!tokenizer.tokenize(&word).is_empty());
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn special_tokens_split_in_one_pass() {
        assert_eq!(
            split_special_tokens("a<|<|endoftext|>b<|startoftext|>"),
            vec![
                ("a<|", None),
                (EOS_TOKEN, Some(EOS_ID)),
                ("b", None),
                (BOS_TOKEN, Some(BOS_ID)),
                ("", None)
            ]
        );
        assert_eq!(split_special_tokens(""), vec![("", None)]);
        let text = EOS_TOKEN.repeat(8_000);
        let start = std::time::Instant::now();
        assert_eq!(split_special_tokens(&text).len(), 16_001);
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn bundled_vocabulary_has_clip_size_and_specials() {
        let t = ClipTokenizer::bundled().unwrap();
        assert_eq!(t.vocab_size(), 49408);
        assert_eq!(t.token_id(BOS_TOKEN), Some(BOS_ID));
        assert_eq!(t.token_id(EOS_TOKEN), Some(EOS_ID));
        assert_eq!(t.pad_id(), EOS_ID);
    }

    #[test]
    fn encode_pads_and_truncates_keeping_eos() {
        let t = ClipTokenizer::bundled().unwrap();
        let short = t.encode("a photo of a cat");
        assert_eq!(short.len(), CONTEXT_LENGTH);
        assert_eq!(short[0], BOS_ID);
        // "a photo of a cat" -> 5 tokens, then EOS, then EOS padding.
        assert!(short[6..].iter().all(|&id| id == EOS_ID));
        let long = t.encode(&"cat ".repeat(200));
        assert_eq!(long.len(), CONTEXT_LENGTH);
        assert_eq!(long[76], EOS_ID);
        assert!(long[1..76].iter().all(|&id| id == long[1]));
    }

    #[test]
    fn bad_merges_file_is_a_typed_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vocab.json"), r#"{"a": 0}"#).unwrap();
        std::fs::write(
            dir.path().join("merges.txt"),
            "#version: 0.2\nonly_one_part\n",
        )
        .unwrap();
        let err = ClipTokenizer::from_folder(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("merges.txt") && err.contains("line 2"),
            "{err}"
        );

        std::fs::write(dir.path().join("vocab.json"), "{not json").unwrap();
        let err = ClipTokenizer::from_folder(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocab.json"), "{err}");
    }
}
