//! Segmentation evaluation: our topics against the reference Stylus composer's topics on the
//! PartiPrompts development set (`parti_prompts.csv`, column `ranked_adapters`: a Python dict
//! literal mapping each topic to a list of Civitai ids).
//!
//! Two measures, micro-averaged over the rows whose reference has at least one topic:
//! - **topic level**: a predicted topic is right when it equals a reference topic after
//!   lower-casing and collapsing whitespace (each reference topic matches at most once);
//! - **word level**: which words of the prompt end up in some topic. A prompt word counts as
//!   covered by a side when it occurs among that side's topic words; precision and recall are over
//!   the prompt's word positions.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stylus_core::{Result, StylusError};

/// One row of the development set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceRow {
    /// 1-based line of the row's first line in the file.
    pub line: usize,
    pub prompt: String,
    /// The reference topics; `None` when the cell is empty (no reference output).
    pub topics: Option<Vec<ReferenceTopic>>,
}

/// A topic the reference composer cut from a prompt, with the Civitai model ids it assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceTopic {
    pub text: String,
    pub adapters: Vec<u64>,
}

/// Precision, recall and F1 with their counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Predicted items that match the reference.
    pub matched: usize,
    pub predicted: usize,
    pub reference: usize,
}

impl Prf {
    pub fn from_counts(matched: usize, predicted: usize, reference: usize) -> Self {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(matched, predicted);
        let recall = ratio(matched, reference);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Self {
            precision,
            recall,
            f1,
            matched,
            predicted,
            reference,
        }
    }
}

/// The result of [`evaluate_segmentation`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentationReport {
    /// Rows scored (reference with at least one topic).
    pub rows: usize,
    /// Rows without reference output (empty cell).
    pub skipped_empty: usize,
    /// Rows whose reference is `{}`.
    pub skipped_no_topics: usize,
    pub topic: Prf,
    pub word: Prf,
}

/// Reads `parti_prompts.csv` (columns `caption` and `ranked_adapters`). Errors name the file and
/// line.
pub fn read_parti_csv(path: &Path) -> Result<Vec<ReferenceRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| StylusError::io(path, e))?;
    parse_parti_csv(&text, path)
}

/// Parses the text of `parti_prompts.csv`; `path` is only used in errors.
pub fn parse_parti_csv(text: &str, path: &Path) -> Result<Vec<ReferenceRow>> {
    let err = |line: usize, message: String| StylusError::Parse {
        path: PathBuf::from(path),
        line: Some(line),
        message,
    };
    let records = parse_csv(text).map_err(|(line, m)| err(line, m))?;
    let Some((header_line, header)) = records.first() else {
        return Err(err(1, "empty file".into()));
    };
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| err(*header_line, format!("no `{name}` column in the header")))
    };
    let caption = column("caption")?;
    let ranked = column("ranked_adapters")?;
    let mut rows = Vec::with_capacity(records.len());
    for (line, record) in &records[1..] {
        if record.len() == 1 && record[0].is_empty() {
            continue; // blank line
        }
        let (Some(prompt), Some(cell)) = (record.get(caption), record.get(ranked)) else {
            return Err(err(
                *line,
                format!("{} fields, header has {}", record.len(), header.len()),
            ));
        };
        let topics = if cell.trim().is_empty() {
            None
        } else {
            Some(parse_dict(cell).map_err(|m| err(*line, format!("ranked_adapters: {m}")))?)
        };
        rows.push(ReferenceRow {
            line: *line,
            prompt: prompt.clone(),
            topics,
        });
    }
    Ok(rows)
}

/// Scores `segmenter` (prompt -> topic texts) against the reference rows.
pub fn evaluate_segmentation(
    rows: &[ReferenceRow],
    segmenter: impl Fn(&str) -> Vec<String>,
) -> SegmentationReport {
    let mut report = SegmentationReport {
        rows: 0,
        skipped_empty: 0,
        skipped_no_topics: 0,
        topic: Prf::default(),
        word: Prf::default(),
    };
    let (mut t_match, mut t_pred, mut t_ref) = (0, 0, 0);
    let (mut w_match, mut w_pred, mut w_ref) = (0, 0, 0);
    for row in rows {
        let reference = match &row.topics {
            None => {
                report.skipped_empty += 1;
                continue;
            }
            Some(t) if t.is_empty() => {
                report.skipped_no_topics += 1;
                continue;
            }
            Some(t) => t,
        };
        report.rows += 1;
        let predicted = segmenter(&row.prompt);

        let mut remaining: Vec<String> = reference.iter().map(|t| normalize(&t.text)).collect();
        for topic in &predicted {
            if let Some(pos) = remaining.iter().position(|r| *r == normalize(topic)) {
                remaining.swap_remove(pos);
                t_match += 1;
            }
        }
        t_pred += predicted.len();
        t_ref += reference.len();

        let reference_texts: Vec<String> = reference.iter().map(|t| t.text.clone()).collect();
        let ref_words = word_set(&reference_texts);
        let pred_words = word_set(&predicted);
        for word in words(&row.prompt) {
            let (r, p) = (ref_words.contains(&word), pred_words.contains(&word));
            w_match += usize::from(r && p);
            w_pred += usize::from(p);
            w_ref += usize::from(r);
        }
    }
    report.topic = Prf::from_counts(t_match, t_pred, t_ref);
    report.word = Prf::from_counts(w_match, w_pred, w_ref);
    report
}

/// Baseline segmenter: the whole prompt is one topic.
pub fn whole_prompt_baseline(prompt: &str) -> Vec<String> {
    vec![prompt.to_string()]
}

/// Baseline segmenter: every word that is not an article, preposition, conjunction, auxiliary or
/// small number is a topic of its own.
pub fn content_words_baseline(prompt: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "to", "is", "are", "was",
        "were", "by", "for", "from", "it", "its", "this", "that", "some", "two", "three", "four",
        "five",
    ];
    prompt
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .filter(|w| !w.is_empty() && !STOP.contains(&w.to_lowercase().as_str()))
        .map(str::to_string)
        .collect()
}

/// Lower case, whitespace collapsed.
pub fn normalize(topic: &str) -> String {
    topic
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The lower-cased words (letter/digit runs) of a text.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn word_set(topics: &[String]) -> HashSet<String> {
    topics.iter().flat_map(|t| words(t)).collect()
}

/// A CSV record's fields with the 1-based line it starts on.
type CsvRecord = (usize, Vec<String>);

/// RFC 4180 records with the 1-based line each starts on. Quoted fields may hold commas, doubled
/// quotes and newlines.
fn parse_csv(text: &str) -> std::result::Result<Vec<CsvRecord>, (usize, String)> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut record_line = 1;
    let mut in_quotes = false;
    let mut quote_line = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => {
                in_quotes = true;
                quote_line = line;
            }
            ',' => record.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push((record_line, std::mem::take(&mut record)));
                line += 1;
                record_line = line;
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err((quote_line, "quoted field is never closed".into()));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push((record_line, record));
    }
    Ok(records)
}

/// A Python dict literal whose keys are strings and values lists of integers:
/// `{'a man': [1, 2], "cat's toy": []}`.
fn parse_dict(cell: &str) -> std::result::Result<Vec<ReferenceTopic>, String> {
    let mut p = PyLiteral {
        chars: cell.trim().chars().collect(),
        pos: 0,
    };
    p.expect('{')?;
    let mut topics = Vec::new();
    loop {
        p.skip_ws();
        if p.eat('}') {
            break;
        }
        let text = p.string()?;
        p.skip_ws();
        p.expect(':')?;
        p.skip_ws();
        let adapters = p.int_list()?;
        topics.push(ReferenceTopic { text, adapters });
        p.skip_ws();
        if p.eat(',') {
            continue;
        }
        p.expect('}')?;
        break;
    }
    p.skip_ws();
    if p.pos != p.chars.len() {
        return Err(format!("trailing text at character {}", p.pos));
    }
    Ok(topics)
}

struct PyLiteral {
    chars: Vec<char>,
    pos: usize,
}

impl PyLiteral {
    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.chars.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "expected `{c}` at character {}, found {}",
                self.pos,
                self.chars
                    .get(self.pos)
                    .map_or("the end".to_string(), |f| format!("`{f}`"))
            ))
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let quote = match self.chars.get(self.pos) {
            Some(&q @ ('\'' | '"')) => q,
            _ => return Err(format!("expected a quoted key at character {}", self.pos)),
        };
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.chars.get(self.pos) {
                None => return Err("unterminated string".into()),
                Some('\\') => {
                    let escaped = self.chars.get(self.pos + 1).ok_or("unterminated escape")?;
                    out.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        other => *other,
                    });
                    self.pos += 2;
                }
                Some(&c) if c == quote => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(&c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn int_list(&mut self) -> std::result::Result<Vec<u64>, String> {
        self.expect('[')?;
        let mut values = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(']') {
                return Ok(values);
            }
            let start = self.pos;
            while self.chars.get(self.pos).is_some_and(char::is_ascii_digit) {
                self.pos += 1;
            }
            let digits: String = self.chars[start..self.pos].iter().collect();
            let value = digits
                .parse::<u64>()
                .map_err(|_| format!("expected an integer at character {start}"))?;
            values.push(value);
            self.skip_ws();
            if !self.eat(',') {
                self.skip_ws();
                self.expect(']')?;
                return Ok(values);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "file_name,caption,ranked_adapters\n\
        0,a man riding a horse,\"{'man': [1, 2], 'horse': [3]}\"\n\
        1,\"a cat, \"\"quoted\"\"\",{}\n\
        2,a dog,\n";

    #[test]
    fn parses_csv_quotes_and_python_dicts() {
        let rows = parse_parti_csv(CSV, Path::new("p.csv")).unwrap();
        assert_eq!(rows.len(), 3);
        let topic = |text: &str, adapters: &[u64]| ReferenceTopic {
            text: text.into(),
            adapters: adapters.to_vec(),
        };
        assert_eq!(
            rows[0].topics.as_deref(),
            Some(&[topic("man", &[1, 2]), topic("horse", &[3])][..])
        );
        assert_eq!(rows[1].prompt, "a cat, \"quoted\"");
        assert_eq!(rows[1].topics, Some(vec![]));
        assert_eq!(rows[2].topics, None);
        assert_eq!(rows[2].line, 4);
        assert_eq!(
            parse_dict(r#"{"cat's toy": [], 'a\'b': [7]}"#).unwrap(),
            [topic("cat's toy", &[]), topic("a'b", &[7])]
        );
    }

    #[test]
    fn malformed_input_names_file_and_line() {
        let bad = "caption,ranked_adapters\nok,{}\nbroken,\"{'a': [1,}\"\n";
        let err = parse_parti_csv(bad, Path::new("parti.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("parti.csv:3"), "{err}");
        let err = parse_parti_csv("caption\nx\n", Path::new("parti.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ranked_adapters"), "{err}");
        let err = parse_parti_csv("caption,ranked_adapters\n\"open,{}\n", Path::new("p.csv"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p.csv:2") && err.contains("never closed"),
            "{err}"
        );
    }

    #[test]
    fn scores_topics_and_words() {
        let rows = parse_parti_csv(CSV, Path::new("p.csv")).unwrap();
        // Predicts "Man" (right after normalizing), "riding" (wrong), misses "horse".
        let report = evaluate_segmentation(&rows, |_| vec![" Man ".into(), "riding".into()]);
        assert_eq!(
            (report.rows, report.skipped_no_topics, report.skipped_empty),
            (1, 1, 1)
        );
        assert_eq!(
            (
                report.topic.matched,
                report.topic.predicted,
                report.topic.reference
            ),
            (1, 2, 2)
        );
        assert!((report.topic.f1 - 0.5).abs() < 1e-12);
        // Words of "a man riding a horse": reference covers man, horse; prediction man, riding.
        assert_eq!(
            (
                report.word.matched,
                report.word.predicted,
                report.word.reference
            ),
            (1, 2, 2)
        );
        let perfect = evaluate_segmentation(&rows, |_| vec!["man".into(), "horse".into()]);
        assert_eq!(perfect.topic.f1, 1.0);
        assert_eq!(perfect.word.f1, 1.0);
    }

    #[test]
    fn baselines_cut_as_documented() {
        assert_eq!(whole_prompt_baseline("a cat, a dog"), ["a cat, a dog"]);
        assert_eq!(
            content_words_baseline("A cat's toy on the red-brick wall"),
            ["cat's", "toy", "red-brick", "wall"]
        );
    }

    #[test]
    fn reads_the_real_development_set() {
        let Some(path) = stylus_test_data::shared("data/stylus/parti_prompts.csv") else {
            return;
        };
        let rows = read_parti_csv(&path).unwrap();
        assert_eq!(rows.len(), 1632);
        assert_eq!(rows.iter().filter(|r| r.topics.is_none()).count(), 79);
        assert_eq!(
            rows.iter()
                .filter(|r| r.topics.as_ref().is_some_and(Vec::is_empty))
                .count(),
            56
        );
    }
}
