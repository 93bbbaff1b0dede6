//! `vectors.postings`: a store's sparse vectors by dimension (the transpose of the CSR rows in
//! `vectors.sparse.safetensors`), so a sparse index is ready at open: a search reads and checks
//! only the lists of its query's dimensions instead of reading all vectors and transposing them.
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `STYLSPP1` |
//! | 4, 4, 8, 8 | format version, `dim`, documents, entries (non-zeros) |
//! | 8 x (dim + 1) | `offsets`: list `d` is entries `offsets[d]..offsets[d + 1]` |
//! | 4 x dim | CRC-32 of each list's bytes |
//! | 4 | CRC-32 of everything above |
//! | 8 x entries | the entries: `(document: u32, value: f32)`, by dimension, documents increasing |
//!
//! Invariant: every byte a search uses is checked: the header by its CRC when the file is opened,
//! a list by its own CRC when first read (with its documents in range and increasing and its
//! values finite); the file's size is checked against the manifest at open.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use stylus_core::{PostingLists, Result, StylusError};

/// The file's name in a store.
pub const POSTINGS_FILE: &str = "vectors.postings";
const MAGIC: &[u8; 8] = b"STYLSPP1";
const VERSION: u32 = 1;
/// Magic, version, dim, documents, entries.
const FIXED_HEADER: usize = 8 + 4 + 4 + 8 + 8;
const ENTRY: usize = 8;

/// The file's bytes for CSR rows (`indptr`, `indices`, `values`, as
/// [`crate::store::StoreVectors::Sparse`] holds them) of `dim` dimensions.
pub fn encode(dim: usize, indptr: &[u64], indices: &[u32], values: &[f32]) -> Vec<u8> {
    let docs = indptr.len().saturating_sub(1);
    let mut counts = vec![0u64; dim];
    for &d in indices {
        counts[d as usize] += 1;
    }
    let mut offsets = Vec::with_capacity(dim + 1);
    offsets.push(0u64);
    for count in &counts {
        offsets.push(offsets.last().copied().unwrap_or(0) + count);
    }
    let mut entries = vec![(0u32, 0f32); indices.len()];
    let mut next: Vec<u64> = offsets[..dim].to_vec();
    for (doc, pair) in indptr.windows(2).enumerate() {
        for i in pair[0] as usize..pair[1] as usize {
            let d = indices[i] as usize;
            entries[next[d] as usize] = (doc as u32, values[i]);
            next[d] += 1;
        }
    }
    let mut data = Vec::with_capacity(entries.len() * ENTRY);
    for (doc, value) in &entries {
        data.extend_from_slice(&doc.to_le_bytes());
        data.extend_from_slice(&value.to_le_bytes());
    }
    let mut bytes = Vec::with_capacity(header_len(dim) + data.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(dim as u32).to_le_bytes());
    bytes.extend_from_slice(&(docs as u64).to_le_bytes());
    bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for offset in &offsets {
        bytes.extend_from_slice(&offset.to_le_bytes());
    }
    for d in 0..dim {
        let range = offsets[d] as usize * ENTRY..offsets[d + 1] as usize * ENTRY;
        bytes.extend_from_slice(&crc32fast::hash(&data[range]).to_le_bytes());
    }
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    bytes.extend_from_slice(&data);
    bytes
}

fn header_len(dim: usize) -> usize {
    FIXED_HEADER + 8 * (dim + 1) + 4 * dim + 4
}

/// A store's postings file, held open: the header is checked at open, each list is read and
/// checked the first time a search asks for it, then kept.
#[derive(Debug)]
pub struct PostingsFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    docs: usize,
    offsets: Vec<u64>,
    crcs: Vec<u32>,
    data_start: u64,
    lists: Vec<OnceLock<Vec<(u32, f32)>>>,
}

impl PostingsFile {
    /// Reads and checks the header of `file` (`len` bytes, as the manifest says) for a store of
    /// `docs` documents of `dim` dimensions.
    pub fn open(
        path: &Path,
        mut file: std::fs::File,
        len: u64,
        dim: usize,
        docs: usize,
    ) -> Result<Self> {
        let bad = |message: String| StylusError::store(path, message);
        // The header takes 12 bytes per dimension: a dimension count the file cannot hold is
        // refused before any size is computed from it (the count comes from the manifest).
        if dim as u64 > len / 12 {
            return Err(bad(format!(
                "{len} bytes: shorter than the header of {dim} dimensions"
            )));
        }
        let header = header_len(dim);
        if len < header as u64 {
            return Err(bad(format!(
                "{len} bytes: shorter than the header of {dim} dimensions ({header} bytes)"
            )));
        }
        let mut bytes = vec![0; header];
        super::store::read_at(&mut file, 0, &mut bytes).map_err(|e| StylusError::io(path, e))?;
        let (checked, crc) = bytes.split_at(header - 4);
        if crc32fast::hash(checked) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad(
                "the header fails its CRC-32 check (damaged file)".into()
            ));
        }
        if &bytes[..8] != MAGIC {
            return Err(bad("not a postings file (bad magic)".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!(
                "format version {version}, this build reads {VERSION}"
            )));
        }
        let (file_dim, file_docs, entries) = (u32_at(12) as usize, u64_at(16), u64_at(24));
        if file_dim != dim || file_docs != docs as u64 {
            return Err(bad(format!(
                "{file_docs} documents of {file_dim} dimensions, the manifest says {docs} of {dim}"
            )));
        }
        let offsets: Vec<u64> = (0..=dim).map(|d| u64_at(FIXED_HEADER + 8 * d)).collect();
        let increasing = offsets.windows(2).all(|w| w[0] <= w[1]);
        if offsets[0] != 0 || offsets[dim] != entries || !increasing {
            return Err(bad(
                "list offsets out of order or not ending at the entry count".into(),
            ));
        }
        let expected = entries
            .checked_mul(ENTRY as u64)
            .and_then(|data| data.checked_add(header as u64));
        if expected != Some(len) {
            return Err(bad(format!(
                "{len} bytes, the header's {entries} entries need {}",
                expected.map_or("more than 2^64".to_string(), |n| n.to_string())
            )));
        }
        let crcs_at = FIXED_HEADER + 8 * (dim + 1);
        let crcs = (0..dim).map(|d| u32_at(crcs_at + 4 * d)).collect();
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            docs,
            offsets,
            crcs,
            data_start: header as u64,
            lists: (0..dim).map(|_| OnceLock::new()).collect(),
        })
    }

    fn read_list(&self, d: usize) -> Result<Vec<(u32, f32)>> {
        let (start, end) = (self.offsets[d], self.offsets[d + 1]);
        let mut bytes = vec![0; (end - start) as usize * ENTRY];
        {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            let at = self.data_start + start * ENTRY as u64;
            super::store::read_at(&mut file, at, &mut bytes)
                .map_err(|e| StylusError::io(&self.path, e))?;
        }
        let bad = |what: &str| StylusError::store(&self.path, format!("dimension {d}: {what}"));
        if crc32fast::hash(&bytes) != self.crcs[d] {
            return Err(bad("the list fails its CRC-32 check (damaged file)"));
        }
        let mut list = Vec::with_capacity(bytes.len() / ENTRY);
        for entry in bytes.chunks_exact(ENTRY) {
            let doc = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
            let value = f32::from_le_bytes(entry[4..].try_into().expect("4 bytes"));
            if doc as usize >= self.docs || list.last().is_some_and(|&(prev, _)| prev >= doc) {
                return Err(bad("documents out of range or out of order"));
            }
            if !value.is_finite() {
                return Err(bad("a value is not finite"));
            }
            list.push((doc, value));
        }
        Ok(list)
    }
}

impl PostingLists for PostingsFile {
    fn dim(&self) -> usize {
        self.lists.len()
    }

    fn docs(&self) -> usize {
        self.docs
    }

    fn list(&self, d: usize) -> Result<&[(u32, f32)]> {
        let Some(slot) = self.lists.get(d) else {
            return Err(StylusError::store(
                &self.path,
                format!("dimension {d} asked of {}", self.lists.len()),
            ));
        };
        if let Some(list) = slot.get() {
            return Ok(list);
        }
        // Two searches may read the same list at once; both get the same checked content.
        let list = self.read_list(d)?;
        Ok(slot.get_or_init(|| list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of a small sparse matrix in CSR form: 7 documents over 5 dimensions, with an empty
    /// row and an empty dimension (3).
    fn csr() -> (Vec<u64>, Vec<u32>, Vec<f32>) {
        let rows: [&[(u32, f32)]; 7] = [
            &[(0, 0.5), (4, -1.0)],
            &[],
            &[(1, 2.0)],
            &[(0, 0.25), (1, 0.125), (2, 3.0), (4, 1.5)],
            &[(2, -0.75)],
            &[(0, 1.0)],
            &[(4, 0.0625)],
        ];
        let mut indptr = vec![0];
        let (mut indices, mut values) = (vec![], vec![]);
        for row in rows {
            for &(d, v) in row {
                indices.push(d);
                values.push(v);
            }
            indptr.push(indices.len() as u64);
        }
        (indptr, indices, values)
    }

    fn transpose(
        dim: usize,
        (indptr, indices, values): &(Vec<u64>, Vec<u32>, Vec<f32>),
    ) -> Vec<Vec<(u32, f32)>> {
        let mut lists = vec![Vec::new(); dim];
        for (doc, pair) in indptr.windows(2).enumerate() {
            for i in pair[0] as usize..pair[1] as usize {
                lists[indices[i] as usize].push((doc as u32, values[i]));
            }
        }
        lists
    }

    fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = dir.join(POSTINGS_FILE);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn open(path: &Path, dim: usize, docs: usize) -> Result<PostingsFile> {
        let file = std::fs::File::open(path).unwrap();
        let len = file.metadata().unwrap().len();
        PostingsFile::open(path, file, len, dim, docs)
    }

    #[test]
    fn the_lists_are_the_rows_transposed() {
        let dir = tempfile::tempdir().unwrap();
        let rows = csr();
        let path = write(dir.path(), &encode(5, &rows.0, &rows.1, &rows.2));
        let postings = open(&path, 5, 7).unwrap();
        assert_eq!((postings.dim(), postings.docs()), (5, 7));
        for (d, expected) in transpose(5, &rows).iter().enumerate() {
            assert_eq!(
                postings.list(d).unwrap(),
                expected.as_slice(),
                "dimension {d}"
            );
            // Read once, then kept.
            assert!(std::ptr::eq(
                postings.list(d).unwrap(),
                postings.list(d).unwrap()
            ));
        }
        assert!(postings.list(5).is_err());
    }

    #[test]
    fn every_damaged_byte_fails_the_open_or_its_list_never_a_wrong_list() {
        let dir = tempfile::tempdir().unwrap();
        let rows = csr();
        let bytes = encode(5, &rows.0, &rows.1, &rows.2);
        let expected = transpose(5, &rows);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            let path = write(dir.path(), &damaged);
            let Ok(postings) = open(&path, 5, 7) else {
                continue;
            };
            let mut failed = false;
            for (d, list) in expected.iter().enumerate() {
                match postings.list(d) {
                    Ok(read) => assert_eq!(read, list.as_slice(), "byte {at}, dimension {d}"),
                    Err(err) => {
                        assert!(err.to_string().contains(POSTINGS_FILE), "{err}");
                        failed = true;
                    }
                }
            }
            assert!(failed, "byte {at}: the damage went unnoticed");
        }
    }

    #[test]
    fn truncated_or_foreign_files_are_refused_at_open_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let rows = csr();
        let bytes = encode(5, &rows.0, &rows.1, &rows.2);
        let cases: [(&[u8], usize, usize, &str); 6] = [
            (&bytes[..bytes.len() - 8], 5, 7, "entries need"),
            (&bytes[..40], 5, 7, "shorter than the header"),
            (&bytes, 5, 8, "the manifest says 8"),
            (&bytes, 6, 7, "CRC-32"),
            (b"", 5, 7, "shorter than the header"),
            (&bytes, usize::MAX / 2, 7, "shorter than the header"),
        ];
        for (content, dim, docs, expected) in cases {
            let path = write(dir.path(), content);
            let err = open(&path, dim, docs).unwrap_err().to_string();
            assert!(
                err.contains(POSTINGS_FILE) && err.contains(expected),
                "{expected}: {err}"
            );
        }
    }
}
