//! A1111's prompt emphasis syntax and long-prompt chunking, so prompts written for
//! AUTOMATIC1111's web UI (and Civitai sample prompts) mean the same here.
//!
//! Emphasis: `(text)` multiplies the weight of its tokens by 1.1, `[text]` divides it by 1.1,
//! `(text:1.3)` sets the factor to 1.3; brackets nest and multiply; `\(`, `\)`, `\[`, `\]`, `\\`
//! are literal characters; unclosed brackets apply to the end of the prompt; a `)` or `]` with
//! nothing open is literal text. `BREAK` (upper case, a word on its own) ends the current chunk.
//! Weights like `(x:1.2.3)` that do not parse as a number stay literal text (A1111 fails there).
//! Brackets nested deeper than [`MAX_NESTING`] (a weight of 1.1^64 = 445 already) still pair up
//! but scale nothing: A1111 rescales every fragment inside each bracket, which is quadratic in a
//! long prompt of nested brackets.
//!
//! Chunks: the prompt's fragments are tokenized separately and packed into chunks of 75 tokens;
//! when a chunk fills up within 20 tokens after a comma, the tokens after the comma move to the
//! next chunk (A1111's default `comma_padding_backtrack`). Each chunk is padded with EOS to 75 and
//! framed as BOS + 75 + EOS; the text encoder runs on each chunk and the outputs are concatenated
//! along the sequence. Emphasis is applied to each chunk's output as A1111 does by default
//! ("Original"): scale each token's vector by its weight, then rescale the whole chunk so its mean
//! is the original mean.

use crate::clip_tokenizer::{BOS_ID, CONTEXT_LENGTH, ClipTokenizer, EOS_ID};

/// Tokens per chunk between BOS and EOS.
pub const CHUNK_TOKENS: usize = CONTEXT_LENGTH - 2;
/// A1111's `comma_padding_backtrack` default.
const COMMA_BACKTRACK: usize = 20;
const ROUND_FACTOR: f64 = 1.1;
const SQUARE_FACTOR: f64 = 1.0 / 1.1;
/// Open brackets that scale their text at once; deeper ones are parsed but scale nothing.
pub const MAX_NESTING: usize = 64;

/// One piece of a parsed prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Fragment {
    /// Text with the product of the emphasis factors around it.
    Text { text: String, weight: f64 },
    /// `BREAK`: start a new chunk.
    Break,
}

/// Parses A1111 emphasis syntax into weighted text fragments; adjacent fragments with equal
/// weights are merged. An empty prompt gives one empty fragment of weight 1.
pub fn parse_emphasis(prompt: &str) -> Vec<Fragment> {
    let mut pieces: Vec<(String, f64, bool)> = Vec::new(); // (text, weight, is_break)
    // Where each open bracket's text starts; `None` for a bracket beyond MAX_NESTING.
    let mut round: Vec<Option<usize>> = Vec::new();
    let mut square: Vec<Option<usize>> = Vec::new();
    let mut scaling = 0; // open brackets that are `Some`
    let open = |stack: &mut Vec<Option<usize>>, scaling: &mut usize, at: usize| {
        stack.push((*scaling < MAX_NESTING).then_some(at));
        *scaling += usize::from(*scaling < MAX_NESTING);
    };
    let close = |stack: &mut Vec<Option<usize>>, scaling: &mut usize| {
        let start = stack.pop().expect("checked non-empty");
        *scaling -= usize::from(start.is_some());
        start
    };
    let scale_from = |pieces: &mut Vec<(String, f64, bool)>, start: Option<usize>, factor: f64| {
        if let Some(start) = start {
            for piece in &mut pieces[start..] {
                piece.1 *= factor;
            }
        }
    };
    let chars: Vec<char> = prompt.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                // `\(` and friends are literal; a lone backslash is dropped.
                match chars.get(i + 1) {
                    Some(&c) if "()[]\\".contains(c) => {
                        pieces.push((c.to_string(), 1.0, false));
                        i += 2;
                    }
                    _ => i += 1,
                }
            }
            '(' => {
                open(&mut round, &mut scaling, pieces.len());
                i += 1;
            }
            '[' => {
                open(&mut square, &mut scaling, pieces.len());
                i += 1;
            }
            ':' => match explicit_weight(&chars[i..]) {
                Some((weight, len)) if !round.is_empty() => {
                    let start = close(&mut round, &mut scaling);
                    scale_from(&mut pieces, start, weight);
                    i += len;
                }
                Some((_, len)) => {
                    push_text(&mut pieces, &chars[i..i + len].iter().collect::<String>());
                    i += len;
                }
                None => {
                    push_text(&mut pieces, ":");
                    i += 1;
                }
            },
            ')' if !round.is_empty() => {
                let start = close(&mut round, &mut scaling);
                scale_from(&mut pieces, start, ROUND_FACTOR);
                i += 1;
            }
            ']' if !square.is_empty() => {
                let start = close(&mut square, &mut scaling);
                scale_from(&mut pieces, start, SQUARE_FACTOR);
                i += 1;
            }
            ')' | ']' => {
                push_text(&mut pieces, &chars[i].to_string());
                i += 1;
            }
            _ => {
                let end = (i..chars.len())
                    .find(|&j| "\\()[]:".contains(chars[j]))
                    .unwrap_or(chars.len());
                push_text(&mut pieces, &chars[i..end].iter().collect::<String>());
                i = end;
            }
        }
    }
    for start in round {
        scale_from(&mut pieces, start, ROUND_FACTOR);
    }
    for start in square {
        scale_from(&mut pieces, start, SQUARE_FACTOR);
    }
    if pieces.is_empty() {
        pieces.push((String::new(), 1.0, false));
    }
    // Merge neighbours of equal weight (a BREAK's weight, -1, never equals a text's).
    let mut merged: Vec<(String, f64, bool)> = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match merged.last_mut() {
            Some(last) if last.1 == piece.1 && !last.2 && !piece.2 => last.0.push_str(&piece.0),
            _ => merged.push(piece),
        }
    }
    merged
        .into_iter()
        .map(|(text, weight, is_break)| {
            if is_break {
                Fragment::Break
            } else {
                Fragment::Text { text, weight }
            }
        })
        .collect()
}

/// `:` + optional spaces + a number + optional spaces + `)` at the start of `chars`: the weight
/// and the length of the match.
fn explicit_weight(chars: &[char]) -> Option<(f64, usize)> {
    let mut i = 1;
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    let number_start = i;
    if chars.get(i).is_some_and(|&c| c == '+' || c == '-') {
        i += 1;
    }
    let digits_start = i;
    while chars
        .get(i)
        .is_some_and(|&c| c == '.' || c.is_ascii_digit())
    {
        i += 1;
    }
    if i == digits_start {
        return None;
    }
    let number: String = chars[number_start..i].iter().collect();
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    if chars.get(i) != Some(&')') {
        return None;
    }
    number.parse::<f64>().ok().map(|w| (w, i + 1))
}

/// Appends plain text, splitting it at `BREAK` words (the spaces around them go too).
fn push_text(pieces: &mut Vec<(String, f64, bool)>, text: &str) {
    let mut rest = text;
    loop {
        match find_break(rest) {
            Some((start, end)) => {
                pieces.push((rest[..start].trim_end().to_string(), 1.0, false));
                pieces.push(("BREAK".to_string(), -1.0, true));
                rest = rest[end..].trim_start();
            }
            None => {
                pieces.push((rest.to_string(), 1.0, false));
                return;
            }
        }
    }
}

/// Byte range of the first `BREAK` that stands as a word.
fn find_break(text: &str) -> Option<(usize, usize)> {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices("BREAK").find_map(|(at, m)| {
        let before = text[..at].chars().next_back();
        let after = text[at + m.len()..].chars().next();
        (!is_word(before) && !is_word(after)).then_some((at, at + m.len()))
    })
}

/// One 77-token text-encoder input with a weight per token.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunk {
    /// BOS, 75 tokens (EOS-padded), EOS.
    pub ids: Vec<u32>,
    /// The emphasis of each position (1 for BOS, EOS and padding).
    pub weights: Vec<f32>,
}

impl PromptChunk {
    /// The chunk of an empty prompt.
    pub fn empty() -> Self {
        Self::frame(Vec::new(), Vec::new())
    }

    fn frame(mut ids: Vec<u32>, mut weights: Vec<f32>) -> Self {
        ids.resize(CHUNK_TOKENS, EOS_ID);
        weights.resize(CHUNK_TOKENS, 1.0);
        ids.insert(0, BOS_ID);
        ids.push(EOS_ID);
        weights.insert(0, 1.0);
        weights.push(1.0);
        Self { ids, weights }
    }
}

/// Splits a prompt (A1111 syntax) into weighted 77-token chunks; never empty.
pub fn prompt_chunks(tokenizer: &ClipTokenizer, prompt: &str) -> Vec<PromptChunk> {
    let comma = tokenizer.token_id(",</w>");
    let mut chunks = Vec::new();
    let mut ids: Vec<u32> = Vec::new();
    let mut weights: Vec<f32> = Vec::new();
    let mut last_comma: Option<usize> = None;
    for fragment in parse_emphasis(prompt) {
        let (text, weight) = match fragment {
            Fragment::Break => {
                chunks.push(PromptChunk::frame(
                    std::mem::take(&mut ids),
                    std::mem::take(&mut weights),
                ));
                last_comma = None;
                continue;
            }
            Fragment::Text { text, weight } => (text, weight as f32),
        };
        for id in tokenizer.tokenize(&text) {
            if Some(id) == comma {
                last_comma = Some(ids.len());
            } else if ids.len() == CHUNK_TOKENS
                && let Some(at) = last_comma
                && ids.len() - at <= COMMA_BACKTRACK
            {
                // Move the words after the last comma to the next chunk.
                let moved_ids = ids.split_off(at + 1);
                let moved_weights = weights.split_off(at + 1);
                chunks.push(PromptChunk::frame(
                    std::mem::replace(&mut ids, moved_ids),
                    std::mem::replace(&mut weights, moved_weights),
                ));
                last_comma = None;
            }
            if ids.len() == CHUNK_TOKENS {
                chunks.push(PromptChunk::frame(
                    std::mem::take(&mut ids),
                    std::mem::take(&mut weights),
                ));
                last_comma = None;
            }
            ids.push(id);
            weights.push(weight);
        }
    }
    if !ids.is_empty() || chunks.is_empty() {
        chunks.push(PromptChunk::frame(ids, weights));
    }
    chunks
}

/// Applies emphasis to one chunk's text-encoder output (`hidden`: 77 x `width`, row-major): each
/// token's vector is multiplied by its weight, then everything by `old mean / new mean`.
pub fn apply_emphasis(hidden: &mut [f32], weights: &[f32], width: usize) {
    if weights.iter().all(|&w| w == 1.0) {
        return;
    }
    let mean =
        |values: &[f32]| values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
    let original_mean = mean(hidden);
    for (row, &weight) in hidden.chunks_mut(width).zip(weights) {
        for v in row {
            *v *= weight;
        }
    }
    let new_mean = mean(hidden);
    let factor = (original_mean / new_mean) as f32;
    for v in hidden.iter_mut() {
        *v *= factor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str, weight: f64) -> Fragment {
        Fragment::Text {
            text: text.to_string(),
            weight,
        }
    }

    #[test]
    fn parses_a1111_emphasis() {
        assert_eq!(parse_emphasis("a cat"), vec![text("a cat", 1.0)]);
        assert_eq!(
            parse_emphasis("a (cat) on a [mat]"),
            vec![
                text("a ", 1.0),
                text("cat", 1.1),
                text(" on a ", 1.0),
                text("mat", 1.0 / 1.1)
            ]
        );
        assert_eq!(parse_emphasis("((cat))"), vec![text("cat", 1.1 * 1.1)]);
        assert_eq!(
            parse_emphasis("(cat:1.3) dog"),
            vec![text("cat", 1.3), text(" dog", 1.0)]
        );
        assert_eq!(parse_emphasis("( cat : 0.5 )"), vec![text(" cat ", 0.5)]);
        assert_eq!(
            parse_emphasis("((a:1.5) b)"),
            vec![text("a", 1.5 * 1.1), text(" b", 1.1)]
        );
        assert_eq!(
            parse_emphasis(r"\(not emphasized\)"),
            vec![text("(not emphasized)", 1.0)]
        );
        assert_eq!(
            parse_emphasis("unclosed (cat"),
            vec![text("unclosed ", 1.0), text("cat", 1.1)]
        );
        assert_eq!(
            parse_emphasis("stray) and ]"),
            vec![text("stray) and ]", 1.0)]
        );
        assert_eq!(
            parse_emphasis("time: 12:30"),
            vec![text("time: 12:30", 1.0)]
        );
        assert_eq!(parse_emphasis("x:1.5) y"), vec![text("x:1.5) y", 1.0)]);
        assert_eq!(parse_emphasis("(x:1.2.3)"), vec![text("x:1.2.3", 1.1)]);
        assert_eq!(parse_emphasis(""), vec![text("", 1.0)]);
        assert_eq!(
            parse_emphasis("a cat BREAK a dog"),
            vec![text("a cat", 1.0), Fragment::Break, text("a dog", 1.0)]
        );
        assert_eq!(parse_emphasis("BREAKFAST"), vec![text("BREAKFAST", 1.0)]);
    }

    #[test]
    fn brackets_beyond_max_nesting_pair_up_but_scale_nothing() {
        let deep = |n: usize| format!("{}x{}", "(".repeat(n), ")".repeat(n));
        let weight = |prompt: &str| match &parse_emphasis(prompt)[0] {
            Fragment::Text { weight, .. } => *weight,
            Fragment::Break => panic!("no text"),
        };
        let cap = weight(&deep(MAX_NESTING));
        assert!((cap - 1.1f64.powi(MAX_NESTING as i32)).abs() < 1e-6 * cap);
        assert_eq!(weight(&deep(MAX_NESTING + 10)), cap);
        // The deeper brackets still close in order: `y` after them is at depth 1 again.
        let prompt = format!(
            "({}x{}y)",
            "(".repeat(MAX_NESTING + 5),
            ")".repeat(MAX_NESTING + 5)
        );
        assert_eq!(
            parse_emphasis(&prompt)[1],
            text("y", 1.1),
            "{:?}",
            &parse_emphasis(&prompt)[1..]
        );
        // 50,000 unclosed brackets, each before its own text: was ~30 s (every bracket rescaled
        // all text after it), now linear.
        let start = std::time::Instant::now();
        assert_eq!(parse_emphasis(&"(a".repeat(50_000)).len(), MAX_NESTING);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn short_prompt_is_one_chunk_like_the_plain_tokenizer() {
        let tokenizer = ClipTokenizer::bundled().unwrap();
        let chunks = prompt_chunks(&tokenizer, "a photo of a (cat:1.5)");
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].ids, tokenizer.encode("a photo of a cat"));
        let cat = tokenizer.token_id("cat</w>").unwrap();
        let position = chunks[0].ids.iter().position(|&id| id == cat).unwrap();
        assert_eq!(position, 5);
        let mut expected = vec![1.0f32; CONTEXT_LENGTH];
        expected[5] = 1.5;
        assert_eq!(chunks[0].weights, expected);
        assert_eq!(prompt_chunks(&tokenizer, ""), vec![PromptChunk::empty()]);
    }

    #[test]
    fn long_prompts_split_into_75_token_chunks() {
        let tokenizer = ClipTokenizer::bundled().unwrap();
        let cat = tokenizer.token_id("cat</w>").unwrap();
        // 100 words, no commas: 75 + 25.
        let chunks = prompt_chunks(&tokenizer, &"cat ".repeat(100));
        assert_eq!(chunks.len(), 2);
        for chunk in &chunks {
            assert_eq!(chunk.ids.len(), CONTEXT_LENGTH);
            assert_eq!((chunk.ids[0], chunk.ids[76]), (BOS_ID, EOS_ID));
        }
        assert!(chunks[0].ids[1..76].iter().all(|&id| id == cat));
        assert!(chunks[1].ids[1..26].iter().all(|&id| id == cat));
        assert!(chunks[1].ids[26..].iter().all(|&id| id == EOS_ID));

        // 70 cats, a comma, 10 dogs: the 5th dog finds the chunk full 5 tokens after a comma,
        // so the 4 dogs after the comma move to the next chunk with the rest.
        let dog = tokenizer.token_id("dog</w>").unwrap();
        let comma = tokenizer.token_id(",</w>").unwrap();
        let prompt = format!("{}, {}", "cat ".repeat(70), "dog ".repeat(10));
        let chunks = prompt_chunks(&tokenizer, &prompt);
        assert_eq!(chunks.len(), 2);
        assert!(chunks[0].ids[1..71].iter().all(|&id| id == cat));
        assert_eq!(chunks[0].ids[71], comma);
        assert!(chunks[0].ids[72..].iter().all(|&id| id == EOS_ID));
        assert!(chunks[1].ids[1..11].iter().all(|&id| id == dog));
        assert!(chunks[1].ids[11..].iter().all(|&id| id == EOS_ID));

        let chunks = prompt_chunks(&tokenizer, "a cat BREAK a dog");
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].ids, tokenizer.encode("a dog"));
    }

    #[test]
    fn emphasis_scales_tokens_and_restores_the_mean() {
        // 3 tokens x width 2.
        let mut hidden = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        apply_emphasis(&mut hidden, &[1.0, 2.0, 0.5], 2);
        // Scaled: [1, 2, 6, 8, 2.5, 3] (mean 22.5 / 6 = 3.75); original mean 3.5.
        let factor = 3.5f32 / 3.75;
        let expected: Vec<f32> = [1.0f32, 2.0, 6.0, 8.0, 2.5, 3.0]
            .iter()
            .map(|v| v * factor)
            .collect();
        assert_eq!(hidden, expected);
        let mut unchanged = vec![1.0, -2.0];
        apply_emphasis(&mut unchanged, &[1.0], 2);
        assert_eq!(unchanged, vec![1.0, -2.0]);
    }
}
