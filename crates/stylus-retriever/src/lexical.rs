//! `LexicalIndex`: BM25 over the adapter documents' fields, the lexical half of hybrid retrieval.
//!
//! Fields are weighted before BM25 saturation (a simplified BM25F): a word in the title or the
//! tags says more about what an adapter does than the same word somewhere in a long description.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stylus_core::{AdapterDoc, Result, RetrievalFilter, StylusError};

use crate::exact::check_k;
use crate::filter::FilterCache;
use crate::select::{Hit, top_k};

/// BM25 parameters and field weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LexicalConfig {
    /// Term-frequency saturation.
    pub k1: f32,
    /// Length normalization (0: none, 1: full).
    pub b: f32,
    pub title_weight: f32,
    pub tags_weight: f32,
    pub trigger_words_weight: f32,
    pub description_weight: f32,
}

impl Default for LexicalConfig {
    fn default() -> Self {
        Self {
            k1: 1.2,
            b: 0.75,
            title_weight: 3.0,
            tags_weight: 2.0,
            trigger_words_weight: 2.0,
            description_weight: 1.0,
        }
    }
}

/// Words that carry no subject in SD prompts or card texts.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "is", "it", "its", "of",
    "on", "or", "that", "the", "this", "to", "with", "you", "your", "i", "my", "me", "we", "can",
    "will", "use", "used", "using", "lora", "model", "version", "v1", "v2", "v3",
];

/// Lower-case word tokens: letters and digits, stopwords and single characters dropped, a plural
/// `s` removed so "cats" meets "cat".
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() > 1 && !STOPWORDS.contains(&w.as_str()))
        .map(|w| match w.strip_suffix('s') {
            Some(stem) if stem.len() > 2 && !stem.ends_with('s') => stem.to_string(),
            _ => w,
        })
        .collect()
}

/// The store file holding [`Bm25Postings`] (see [`Bm25Postings::to_bytes`]).
pub const BM25_FILE: &str = "bm25.postings";
/// The layout version of [`BM25_FILE`], bumped with any change to the layout or to [`tokens`]
/// (a file of another version is stale: rebuilt, never read as if current).
pub const BM25_FORMAT_VERSION: u32 = 1;
const BM25_MAGIC: &[u8; 8] = b"STYLBM25";
/// Magic, version, reserved, 6 config floats, 4 counts, mean length, padding.
const BM25_HEADER: usize = 8 + 4 + 4 + 6 * 4 + 4 * 8 + 4 + 4;

/// The BM25 inverted index of a document list, without the documents: sorted terms and their
/// postings in CSR form (the same layout in memory and on disk, so loading is a copy plus a
/// validation pass, not a re-tokenization of every card).
#[derive(Debug, Clone, PartialEq)]
pub struct Bm25Postings {
    config: LexicalConfig,
    /// The terms, sorted by their bytes, concatenated: term `i` is
    /// `term_bytes[term_offsets[i]..term_offsets[i + 1]]`.
    term_bytes: Vec<u8>,
    term_offsets: Vec<u32>,
    /// Term `i`'s postings are `posting_docs[posting_offsets[i]..posting_offsets[i + 1]]`
    /// (increasing document numbers) with their weighted term frequencies in `posting_tfs`.
    posting_offsets: Vec<u64>,
    posting_docs: Vec<u32>,
    posting_tfs: Vec<f32>,
    /// Weighted length of each document.
    lengths: Vec<f32>,
    mean_length: f32,
}

impl Bm25Postings {
    /// Tokenizes every document (in parallel) and indexes it.
    pub fn build<D: std::borrow::Borrow<AdapterDoc> + Sync>(
        docs: &[D],
        config: LexicalConfig,
    ) -> Self {
        use rayon::prelude::*;
        // Tokenizing is most of the work: documents in parallel, then one merge in document
        // order, so postings are sorted by document.
        let per_doc: Vec<(Vec<(String, f32)>, f32)> = docs
            .par_iter()
            .map(|doc| {
                let doc: &AdapterDoc = doc.borrow();
                let mut tf: HashMap<String, f32, foldhash::fast::RandomState> = HashMap::default();
                let card = &doc.card;
                let fields = [
                    (card.title.as_str(), config.title_weight),
                    (&card.tags.join(" "), config.tags_weight),
                    (&card.trigger_words.join(" "), config.trigger_words_weight),
                    (doc.description.as_str(), config.description_weight),
                ];
                let mut length = 0.0;
                for (text, weight) in fields {
                    for token in tokens(text) {
                        *tf.entry(token).or_default() += weight;
                        length += weight;
                    }
                }
                (tf.into_iter().collect(), length)
            })
            .collect();
        let mut postings: HashMap<String, Vec<(u32, f32)>, foldhash::fast::RandomState> =
            HashMap::default();
        let mut lengths = Vec::with_capacity(docs.len());
        for (i, (tf, length)) in per_doc.into_iter().enumerate() {
            for (term, f) in tf {
                postings.entry(term).or_default().push((i as u32, f));
            }
            lengths.push(length);
        }
        let mean_length = if lengths.is_empty() {
            1.0
        } else {
            (lengths.iter().sum::<f32>() / lengths.len() as f32).max(1e-6)
        };
        let mut terms: Vec<(String, Vec<(u32, f32)>)> = postings.into_iter().collect();
        terms.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let total: usize = terms.iter().map(|(_, p)| p.len()).sum();
        let mut out = Self {
            config,
            term_bytes: Vec::new(),
            term_offsets: Vec::with_capacity(terms.len() + 1),
            posting_offsets: Vec::with_capacity(terms.len() + 1),
            posting_docs: Vec::with_capacity(total),
            posting_tfs: Vec::with_capacity(total),
            lengths,
            mean_length,
        };
        out.term_offsets.push(0);
        out.posting_offsets.push(0);
        for (term, list) in terms {
            out.term_bytes.extend_from_slice(term.as_bytes());
            out.term_offsets.push(out.term_bytes.len() as u32);
            for (doc, f) in list {
                out.posting_docs.push(doc);
                out.posting_tfs.push(f);
            }
            out.posting_offsets.push(out.posting_docs.len() as u64);
        }
        out
    }

    /// The BM25 parameters the postings were weighted with.
    pub fn config(&self) -> LexicalConfig {
        self.config
    }

    /// Number of documents indexed.
    pub fn doc_count(&self) -> usize {
        self.lengths.len()
    }

    /// Number of distinct terms.
    pub fn term_count(&self) -> usize {
        self.term_offsets.len() - 1
    }

    fn term(&self, i: usize) -> &[u8] {
        &self.term_bytes[self.term_offsets[i] as usize..self.term_offsets[i + 1] as usize]
    }

    /// The postings of `term`: (documents, weighted term frequencies).
    fn postings(&self, term: &str) -> Option<(&[u32], &[f32])> {
        let term = term.as_bytes();
        let n = self.term_count();
        let at = partition_point(n, |i| self.term(i) < term);
        (at < n && self.term(at) == term).then(|| {
            let (a, b) = (
                self.posting_offsets[at] as usize,
                self.posting_offsets[at + 1] as usize,
            );
            (&self.posting_docs[a..b], &self.posting_tfs[a..b])
        })
    }

    /// The file form (little-endian): `STYLBM25`, version u32, 0u32, the six config floats,
    /// documents, terms, postings and term bytes (u64 each), the mean length f32, 0u32; then the
    /// document lengths f32, term offsets u32 [terms + 1], posting offsets u64 [terms + 1],
    /// posting documents u32, posting frequencies f32 and the term bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let c = &self.config;
        let mut out = Vec::with_capacity(
            BM25_HEADER
                + 4 * self.lengths.len()
                + 12 * self.term_offsets.len()
                + 8 * self.posting_docs.len()
                + self.term_bytes.len(),
        );
        out.extend_from_slice(BM25_MAGIC);
        out.extend_from_slice(&BM25_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for v in [
            c.k1,
            c.b,
            c.title_weight,
            c.tags_weight,
            c.trigger_words_weight,
            c.description_weight,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for n in [
            self.lengths.len(),
            self.term_count(),
            self.posting_docs.len(),
            self.term_bytes.len(),
        ] {
            out.extend_from_slice(&(n as u64).to_le_bytes());
        }
        out.extend_from_slice(&self.mean_length.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        debug_assert_eq!(out.len(), BM25_HEADER);
        self.lengths
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        self.term_offsets
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        self.posting_offsets
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        self.posting_docs
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        self.posting_tfs
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        out.extend_from_slice(&self.term_bytes);
        out
    }

    /// The layout version of a file's bytes, when they start like a postings file at all.
    pub fn file_version(bytes: &[u8]) -> Option<u32> {
        (bytes.len() >= 12 && &bytes[..8] == BM25_MAGIC)
            .then(|| u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")))
    }

    /// Reads [`Self::to_bytes`]'s form and checks all of it (sizes, offsets, sorted terms,
    /// document numbers, finite weights), so a damaged file is an error naming `path`, never a
    /// panic or a wrong ranking. A file of another [`BM25_FORMAT_VERSION`] is an error too:
    /// see [`Self::file_version`] to rebuild instead.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |message: String| StylusError::store(path, message);
        if bytes.len() < BM25_HEADER || &bytes[..8] != BM25_MAGIC {
            return Err(bad(
                "not a BM25 postings file (bad magic or too short)".into()
            ));
        }
        let mut reader = Reader { bytes, at: 8 };
        let version = reader.u32();
        if version != BM25_FORMAT_VERSION {
            return Err(bad(format!(
                "BM25 postings format v{version}, this build reads v{BM25_FORMAT_VERSION}; \
                 run `stylus index` again to rewrite the store"
            )));
        }
        let _reserved = reader.u32();
        let mut c = [0f32; 6];
        c.iter_mut().for_each(|v| *v = reader.f32());
        let config = LexicalConfig {
            k1: c[0],
            b: c[1],
            title_weight: c[2],
            tags_weight: c[3],
            trigger_words_weight: c[4],
            description_weight: c[5],
        };
        let mut n = [0u64; 4];
        n.iter_mut().for_each(|v| *v = reader.u64());
        let [docs, terms, postings, term_len] = n;
        let mean_length = reader.f32();
        let _pad = reader.u32();
        // Every size checked in u128, so no count can overflow the expected length.
        let expected = BM25_HEADER as u128
            + 4 * docs as u128
            + 12 * (terms as u128 + 1)
            + 8 * postings as u128
            + term_len as u128;
        if expected != bytes.len() as u128 {
            return Err(bad(format!(
                "{} bytes, its header announces {expected} (truncated or damaged)",
                bytes.len()
            )));
        }
        if docs > u32::MAX as u64 || term_len > u32::MAX as u64 {
            return Err(bad("more than 2^32 documents or term bytes".into()));
        }
        let (docs, terms, postings, term_len) = (
            docs as usize,
            terms as usize,
            postings as usize,
            term_len as usize,
        );
        if !(c.iter().all(|v| v.is_finite()) && mean_length.is_finite() && mean_length > 0.0) {
            return Err(bad("non-finite BM25 parameters or mean length".into()));
        }
        let lengths = reader.f32s(docs);
        if lengths.iter().any(|l| !(l.is_finite() && *l >= 0.0)) {
            return Err(bad("a document length is negative or not finite".into()));
        }
        let term_offsets = reader.u32s(terms + 1);
        let posting_offsets = reader.u64s(terms + 1);
        let posting_docs = reader.u32s(postings);
        let posting_tfs = reader.f32s(postings);
        let term_bytes = bytes[reader.at..].to_vec();
        if term_offsets[0] != 0 || term_offsets[terms] as usize != term_len {
            return Err(bad("term offsets do not span the term bytes".into()));
        }
        if posting_offsets[0] != 0 || posting_offsets[terms] != postings as u64 {
            return Err(bad("posting offsets do not span the postings".into()));
        }
        let mut previous: &[u8] = &[];
        for i in 0..terms {
            let (a, b) = (term_offsets[i] as usize, term_offsets[i + 1] as usize);
            let (p, q) = (posting_offsets[i], posting_offsets[i + 1]);
            if a >= b || b > term_len || p >= q || q > postings as u64 {
                return Err(bad(format!("bad offsets at term {i}")));
            }
            let term = &term_bytes[a..b];
            if i > 0 && term <= previous {
                return Err(bad(format!("terms not sorted at term {i}")));
            }
            previous = term;
            let list = &posting_docs[p as usize..q as usize];
            if list.windows(2).any(|w| w[0] >= w[1])
                || list.last().is_some_and(|&d| d as usize >= docs)
            {
                return Err(bad(format!(
                    "postings of term {i} are not increasing document numbers below {docs}"
                )));
            }
        }
        if posting_tfs.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
            return Err(bad("a term frequency is not positive and finite".into()));
        }
        Ok(Self {
            config,
            term_bytes,
            term_offsets,
            posting_offsets,
            posting_docs,
            posting_tfs,
            lengths,
            mean_length,
        })
    }
}

/// The first index in `0..n` where `before` turns false (`before` is true on a prefix).
fn partition_point(n: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Little-endian reads at a cursor; the caller has checked the total length.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let out = self.bytes[self.at..self.at + N]
            .try_into()
            .expect("N bytes");
        self.at += N;
        out
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.take())
    }
    fn chunks<const N: usize, T>(&mut self, n: usize, f: impl Fn([u8; N]) -> T) -> Vec<T> {
        let end = self.at + n * N;
        let out = self.bytes[self.at..end]
            .chunks_exact(N)
            .map(|c| f(c.try_into().expect("N bytes")))
            .collect();
        self.at = end;
        out
    }
    fn u32s(&mut self, n: usize) -> Vec<u32> {
        self.chunks(n, u32::from_le_bytes)
    }
    fn u64s(&mut self, n: usize) -> Vec<u64> {
        self.chunks(n, u64::from_le_bytes)
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.chunks(n, f32::from_le_bytes)
    }
}

/// An inverted index with BM25 scoring over a list of documents.
#[derive(Debug)]
pub struct LexicalIndex {
    docs: Vec<Arc<AdapterDoc>>,
    postings: Bm25Postings,
    filters: FilterCache,
}

impl LexicalIndex {
    pub fn build(docs: Vec<Arc<AdapterDoc>>, config: LexicalConfig) -> Self {
        let postings = Bm25Postings::build(&docs, config);
        Self {
            docs,
            postings,
            filters: FilterCache::default(),
        }
    }

    /// The index of `docs` from postings built (or saved) for exactly these documents, in this
    /// order. A count mismatch is an error.
    pub fn from_postings(docs: Vec<Arc<AdapterDoc>>, postings: Bm25Postings) -> Result<Self> {
        if postings.doc_count() != docs.len() {
            return Err(StylusError::InvalidArgument(format!(
                "BM25 postings of {} documents for {} documents",
                postings.doc_count(),
                docs.len()
            )));
        }
        Ok(Self {
            docs,
            postings,
            filters: FilterCache::default(),
        })
    }

    pub fn docs(&self) -> &[Arc<AdapterDoc>] {
        &self.docs
    }

    pub fn postings(&self) -> &Bm25Postings {
        &self.postings
    }

    /// The `k` best documents for `text` passing `filter`, best first. Documents sharing no word
    /// with the query are not returned, so there may be fewer than `k`.
    pub fn search(&self, text: &str, k: usize, filter: &RetrievalFilter) -> Result<Vec<Hit>> {
        check_k(k)?;
        let mut terms = tokens(text);
        terms.sort_unstable();
        terms.dedup();
        let p = &self.postings;
        let n = self.docs.len() as f32;
        let (k1, b) = (p.config.k1, p.config.b);
        let mut scores = vec![0f32; self.docs.len()];
        for term in &terms {
            let Some((docs, tfs)) = p.postings(term) else {
                continue;
            };
            let df = docs.len() as f32;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for (&doc, &tf) in docs.iter().zip(tfs) {
                let norm = k1 * (1.0 - b + b * p.lengths[doc as usize] / p.mean_length);
                scores[doc as usize] += idf * tf * (k1 + 1.0) / (tf + norm);
            }
        }
        let mask = self.filters.mask(&self.docs, filter);
        let hits: Vec<Hit> = scores
            .into_iter()
            .enumerate()
            .filter(|&(i, s)| s > 0.0 && mask.as_ref().is_none_or(|m| m.accepts(i)))
            .map(|(index, score)| Hit { index, score })
            .collect();
        Ok(top_k(hits, k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stylus_core::{AdapterCard, AdapterId, Category};

    fn doc(id: u64, title: &str, tags: &[&str], description: &str) -> Arc<AdapterDoc> {
        let mut card = AdapterCard::new(AdapterId::Civitai(id), title, "LORA");
        card.tags = tags.iter().map(|t| t.to_string()).collect();
        Arc::new(AdapterDoc {
            description: description.into(),
            recommended_weight: 0.8,
            category: Category::Concept,
            embedding_text: String::new(),
            refiner: "test".into(),
            card,
        })
    }

    #[test]
    fn tokens_drop_stopwords_and_plurals() {
        assert_eq!(
            tokens("The Cats, in 3D! <lora:x:0.5> glass"),
            ["cat", "3d", "glass"]
        );
    }

    #[test]
    fn title_and_tag_matches_outrank_description_mentions() {
        let docs = sample_docs()[..3].to_vec();
        let index = LexicalIndex::build(docs, LexicalConfig::default());
        let all = RetrievalFilter {
            allow_nsfw: true,
            ..Default::default()
        };
        let hits = index
            .search("a watercolor painting of cats", 10, &all)
            .unwrap();
        let order: Vec<usize> = hits.iter().map(|h| h.index).collect();
        assert_eq!(order, vec![0, 2, 1]);
        assert!(index.search("zeppelin", 10, &all).unwrap().is_empty());
        let no_cats = RetrievalFilter {
            blocked_ids: [AdapterId::Civitai(3)].into(),
            ..all
        };
        assert!(index.search("cats", 10, &no_cats).unwrap().is_empty());
        assert!(
            index
                .search("cats", 0, &RetrievalFilter::default())
                .is_err()
        );
    }

    fn sample_docs() -> Vec<Arc<AdapterDoc>> {
        vec![
            doc(
                1,
                "Watercolor style",
                &["style", "painting"],
                "soft paper texture",
            ),
            doc(
                2,
                "Cyberpunk city",
                &["city"],
                "neon streets, a watercolor touch",
            ),
            doc(3, "Cute cats", &["animal", "cat"], "fluffy"),
            doc(4, "Ñandú bird", &["bird", "animal"], "a big bird, Ωmega"),
        ]
    }

    #[test]
    fn saved_postings_read_back_to_the_same_rankings() {
        let docs = sample_docs();
        let built = LexicalIndex::build(docs.clone(), LexicalConfig::default());
        let bytes = built.postings().to_bytes();
        assert_eq!(
            Bm25Postings::file_version(&bytes),
            Some(BM25_FORMAT_VERSION)
        );
        let read = Bm25Postings::from_bytes(&bytes, Path::new("x/bm25.postings")).unwrap();
        assert_eq!(&read, built.postings());
        // The same bytes every time (an unchanged re-index compares them).
        assert_eq!(
            Bm25Postings::build(&docs, LexicalConfig::default()).to_bytes(),
            bytes
        );
        let loaded = LexicalIndex::from_postings(docs.clone(), read).unwrap();
        let all = RetrievalFilter {
            allow_nsfw: true,
            ..Default::default()
        };
        for query in [
            "watercolor cats",
            "animal bird",
            "ñandú",
            "zeppelin",
            "city neon",
        ] {
            assert_eq!(
                loaded.search(query, 10, &all).unwrap(),
                built.search(query, 10, &all).unwrap(),
                "{query}"
            );
        }
        // Postings for other documents are refused.
        let postings = built.postings().clone();
        assert!(LexicalIndex::from_postings(docs[..3].to_vec(), postings).is_err());
    }

    #[test]
    fn damaged_postings_are_errors_naming_the_file_never_panics() {
        let bytes = LexicalIndex::build(sample_docs(), LexicalConfig::default())
            .postings()
            .to_bytes();
        let path = Path::new("store/bm25.postings");
        for len in 0..bytes.len() {
            let err = Bm25Postings::from_bytes(&bytes[..len], path).unwrap_err();
            assert!(err.to_string().contains("bm25.postings"), "{err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Bm25Postings::from_bytes(&longer, path).is_err());
        // Any one byte changed: read or refused, never a panic.
        for at in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                let _ = Bm25Postings::from_bytes(&damaged, path);
            }
        }
        // Structural damage the checks must catch: unsorted terms, a document out of range.
        let mut postings = Bm25Postings::from_bytes(&bytes, path).unwrap();
        postings.posting_docs[0] = 99;
        assert!(Bm25Postings::from_bytes(&postings.to_bytes(), path).is_err());
        let mut postings = Bm25Postings::from_bytes(&bytes, path).unwrap();
        postings.term_bytes.swap(0, 1);
        postings.term_bytes[0] = b'z';
        assert!(Bm25Postings::from_bytes(&postings.to_bytes(), path).is_err());
        // Another layout version is named as such.
        let mut other = bytes.clone();
        other[8..12].copy_from_slice(&(BM25_FORMAT_VERSION + 1).to_le_bytes());
        assert_eq!(
            Bm25Postings::file_version(&other),
            Some(BM25_FORMAT_VERSION + 1)
        );
        let err = Bm25Postings::from_bytes(&other, path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("format v{}", BM25_FORMAT_VERSION + 1))
                && err.contains("bm25.postings"),
            "{err}"
        );
        assert_eq!(Bm25Postings::file_version(b"garbage"), None);
    }
}
