//! [`LexicalEmbedder`]: hashed TF-IDF vectors, no model weights at all, so a fresh checkout can
//! index and search with nothing downloaded.
//!
//! Text is lower-cased and split into words (runs of letters and digits; each CJK character is a
//! word of its own, since Chinese and Japanese card text has no spaces). Unigrams and bigrams of
//! the words that are not stopwords are hashed (FNV-1a, 64 bit) into `dim` buckets with a sign bit
//! (collisions then cancel on average instead of piling up). A feature's value is
//! `(1 + ln tf) * idf[bucket]` (sublinear term frequency); the vector is L2-normalized so the
//! dense retrievers work unchanged. The IDF table is fitted on the indexed corpus
//! (`ln((1 + N) / (1 + df)) + 1`, df counted per bucket) and saved in the store, so queries use
//! the same table; the embedder id carries the dimension and a hash of the table, so a store and
//! a query embedder with different tables refuse to mix.

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use stylus_core::{Embedder, Result, StylusError};

use crate::store::{ExtraFile, StylusDocs, f32_tensor_bytes, read_f32_tensor};

/// Buckets by default: 2^12. Each store vector costs `4 * dim` bytes (16 KiB at 4096, so 7K
/// cards take 112 MiB); more buckets mean fewer collisions but a bigger store.
pub const DEFAULT_DIM: usize = 4096;

/// The name of the IDF table inside a StylusDocs store.
pub const IDF_FILE: &str = "lexical_idf.safetensors";

/// The tensor name of the IDF table.
const IDF_TENSOR: &str = "idf";

/// English function words that carry no topic (kept short on purpose: words like "style" or
/// "girl" are signal here).
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "of", "to", "in", "on", "at", "for", "with", "by", "from", "is",
    "are", "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "as", "if",
    "but", "not", "no", "so", "you", "your", "i", "my", "me", "we", "our", "can", "will", "just",
    "use", "using", "used", "also", "very", "more", "some", "any", "all", "have", "has", "had",
    "do", "does", "than", "then", "there", "here", "which", "what", "when", "how", "s", "t",
];

/// Hashed TF-IDF embedder (see the module docs).
#[derive(Debug, Clone)]
pub struct LexicalEmbedder {
    idf: Vec<f32>,
    id: String,
}

impl LexicalEmbedder {
    /// Fits the IDF table on `texts` (the documents to be indexed). `dim` must be at least 16.
    pub fn fit<S: AsRef<str>>(texts: &[S], dim: usize) -> Result<Self> {
        if dim < 16 {
            return Err(StylusError::InvalidArgument(format!(
                "lexical embedder dimension {dim} is below 16"
            )));
        }
        let mut df = vec![0u32; dim];
        let mut seen = vec![false; dim];
        let mut touched = Vec::new();
        for text in texts {
            for hash in features(text.as_ref()) {
                let bucket = (hash % dim as u64) as usize;
                if !seen[bucket] {
                    seen[bucket] = true;
                    touched.push(bucket);
                }
            }
            for bucket in touched.drain(..) {
                df[bucket] += 1;
                seen[bucket] = false;
            }
        }
        let n = texts.len() as f64;
        let idf = df
            .iter()
            .map(|&d| (((1.0 + n) / (1.0 + d as f64)).ln() + 1.0) as f32)
            .collect();
        Self::from_idf(idf)
    }

    /// An embedder with a given IDF table (one positive finite value per bucket).
    pub fn from_idf(idf: Vec<f32>) -> Result<Self> {
        if idf.len() < 16 || idf.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            return Err(StylusError::InvalidArgument(
                "lexical IDF table needs >= 16 positive finite values".into(),
            ));
        }
        let mut hasher = Sha256::new();
        for v in &idf {
            hasher.update(v.to_le_bytes());
        }
        let digest = hex::encode(hasher.finalize());
        let id = format!("lexical-tfidf-v1:dim={}:idf={}", idf.len(), &digest[..16]);
        Ok(Self { idf, id })
    }

    /// The IDF table, one value per bucket.
    pub fn idf(&self) -> &[f32] {
        &self.idf
    }

    /// The embedder's IDF table as a store file ([`IDF_FILE`]).
    pub fn store_file(&self) -> ExtraFile {
        ExtraFile {
            name: IDF_FILE.to_string(),
            bytes: f32_tensor_bytes(IDF_TENSOR, &[self.idf.len()], &self.idf),
        }
    }

    /// The embedder a store was built with: reads its [`IDF_FILE`] and checks that the id matches
    /// the store's embedder id.
    pub fn from_store(store: &StylusDocs) -> Result<Self> {
        let path = store.dir().join(IDF_FILE);
        if !store.manifest().files.contains_key(IDF_FILE) {
            return Err(StylusError::store(
                &path,
                format!(
                    "the store was built with embedder `{}`, not the lexical one (no {IDF_FILE})",
                    store.embedder_id()
                ),
            ));
        }
        let embedder = Self::load(&path)?;
        if embedder.id != store.embedder_id() {
            return Err(StylusError::store(
                &path,
                format!(
                    "IDF table gives embedder id `{}`, the manifest says `{}`",
                    embedder.id,
                    store.embedder_id()
                ),
            ));
        }
        Ok(embedder)
    }

    /// Reads an IDF table file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| StylusError::io(path, e))?;
        let (shape, idf) = read_f32_tensor(path, &bytes, IDF_TENSOR)?;
        if shape.len() != 1 {
            return Err(StylusError::tensor(
                path,
                IDF_TENSOR,
                format!("expected 1-D, got {shape:?}"),
            ));
        }
        Self::from_idf(idf).map_err(|e| StylusError::tensor(path, IDF_TENSOR, e.to_string()))
    }

    /// The L2-normalized vector of one text; all zeros when the text has no words.
    pub fn embed_text(&self, text: &str) -> Vec<f32> {
        let dim = self.idf.len();
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for hash in features(text) {
            *counts.entry(hash).or_insert(0) += 1;
        }
        let mut vector = vec![0f32; dim];
        for (hash, tf) in counts {
            let bucket = (hash % dim as u64) as usize;
            let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
            vector[bucket] += sign * (1.0 + (tf as f32).ln()) * self.idf[bucket];
        }
        let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            vector.iter_mut().for_each(|v| *v /= norm);
        }
        vector
    }
}

#[async_trait]
impl Embedder for LexicalEmbedder {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn dim(&self) -> usize {
        self.idf.len()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.embed_text(t)).collect())
    }
}

/// The words of a text (see the module docs), stopwords removed.
pub fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, words: &mut Vec<String>| {
        if !current.is_empty() {
            if !STOPWORDS.contains(&current.as_str()) {
                words.push(std::mem::take(current));
            }
            current.clear();
        }
    };
    for c in text.chars().flat_map(char::to_lowercase) {
        if is_cjk(c) {
            flush(&mut current, &mut words);
            words.push(c.to_string());
        } else if c.is_alphanumeric() {
            current.push(c);
        } else {
            flush(&mut current, &mut words);
        }
    }
    flush(&mut current, &mut words);
    words
}

/// Hashes of the unigram and bigram features of a text.
fn features(text: &str) -> Vec<u64> {
    let words = words(text);
    let unigrams = words.iter().map(|w| fnv1a(&[w.as_bytes()]));
    let bigrams = words
        .windows(2)
        .map(|pair| fnv1a(&[pair[0].as_bytes(), b" ", pair[1].as_bytes()]));
    unigrams.chain(bigrams).collect()
}

/// 64-bit FNV-1a over the concatenated parts: fixed, portable, so stores hash the same everywhere.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// CJK ideographs, kana and Hangul: scripts written without spaces between words.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xAC00..=0xD7AF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn words_split_lowercase_and_cjk() {
        assert_eq!(
            words("The Red-Car, a 3D style!"),
            ["red", "car", "3d", "style"]
        );
        assert_eq!(words("墨心 MoXin"), ["墨", "心", "moxin"]);
        assert!(words("  ,, ").is_empty());
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(&[b""]), 0xcbf29ce484222325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(&[b"foo"]), 0xdcb27518fed9d577);
        assert_eq!(fnv1a(&[b"fo", b"o"]), fnv1a(&[b"foo"]));
    }

    #[test]
    fn vectors_are_unit_and_similar_texts_score_higher() {
        let corpus = [
            "watercolor painting style soft colors",
            "red sports car vehicle",
            "school uniform clothing outfit",
            "ink wash painting chinese style",
        ];
        let e = LexicalEmbedder::fit(&corpus, 1024).unwrap();
        assert_eq!(e.dim(), 1024);
        let q = e.embed_text("a watercolor painting of a cat");
        assert!((dot(&q, &q) - 1.0).abs() < 1e-5);
        let docs: Vec<Vec<f32>> = corpus.iter().map(|t| e.embed_text(t)).collect();
        let scores: Vec<f32> = docs.iter().map(|d| dot(&q, d)).collect();
        assert!(scores[0] > scores[3] && scores[3] > scores[1], "{scores:?}");
        assert!(e.embed_text("the of and").iter().all(|v| *v == 0.0));
    }

    #[test]
    fn idf_weights_rare_words_up_and_id_tracks_the_table() {
        let corpus = ["style a", "style b", "style c", "unique d"];
        let e = LexicalEmbedder::fit(&corpus, 64).unwrap();
        let bucket = |w: &str| (fnv1a(&[w.as_bytes()]) % 64) as usize;
        assert!(e.idf()[bucket("unique")] > e.idf()[bucket("style")]);
        let other = LexicalEmbedder::fit(&corpus[..3], 64).unwrap();
        assert_ne!(e.id(), other.id());
        assert!(e.id().starts_with("lexical-tfidf-v1:dim=64:idf="));
        assert!(LexicalEmbedder::fit(&corpus, 8).is_err());
        assert!(LexicalEmbedder::from_idf(vec![f32::NAN; 32]).is_err());
    }

    #[test]
    fn idf_round_trips_through_its_file() {
        let e = LexicalEmbedder::fit(&["one two", "two three"], 32).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = e.store_file();
        let path = dir.path().join(&file.name);
        std::fs::write(&path, &file.bytes).unwrap();
        let back = LexicalEmbedder::load(&path).unwrap();
        assert_eq!(back.id(), e.id());
        assert_eq!(back.idf(), e.idf());
        std::fs::write(&path, &file.bytes[..file.bytes.len() - 3]).unwrap();
        let err = LexicalEmbedder::load(&path).unwrap_err().to_string();
        assert!(err.contains(IDF_FILE), "{err}");
    }
}
