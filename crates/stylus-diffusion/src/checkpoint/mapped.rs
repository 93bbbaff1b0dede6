//! The bytes of a safetensors file, memory-mapped read-only instead of read into a `Vec`.
//!
//! Loading a 2-4 GB checkpoint through `fs::read` costs a full copy of the file in memory next
//! to the model being built (peak RSS ~2x the model). A mapping costs only the pages touched, and
//! [`FileBytes::release`] hands the pages of a tensor back once it has been converted, so the
//! peak of a load is the model plus about one tensor.
//!
//! # Safety stance of the mapping
//!
//! A mapping is only sound while nobody changes the file under it. What we rely on and what we
//! do about the rest:
//! - The file is opened read-only and mapped read-only (`PROT_READ`, shared); we never write
//!   through it.
//! - Everything structural is read once and copied into owned values at open: the header length,
//!   the JSON header (tensor names, dtypes, shapes, offsets) and the file length are validated
//!   against each other before any tensor is touched, so a later change of the header cannot
//!   move an offset we use.
//! - Tensor bytes are only ever read into owned buffers (converted, checked for non-finite
//!   values); no tensor keeps pointing into the map, and the map is dropped when the load ends.
//! - If another process rewrites the file in place while it is mapped, we may read a mix of old
//!   and new bytes: every value is still a float that goes through the finiteness check, and
//!   [`FileBytes::check_unchanged`] (length and modification time of the open file, compared at
//!   the end of a load) turns such a load into a typed error instead of a silent mix. Replacing
//!   the file by rename (what downloaders and `stylus fetch` do) does not affect an open map.
//! - If another process *truncates* the file while it is mapped, touching a page past the new end
//!   raises SIGBUS and the process dies; it cannot read out-of-bounds memory or panic with a
//!   corrupted state. This is the same contract as safetensors' `safe_open`, candle and
//!   llama.cpp; model files are not expected to be truncated while a generation server loads them.
//!
//! Small and in-memory images (tests, downloads being checked) use [`FileBytes::from_vec`].

use std::fs::File;
use std::ops::{Deref, Range};
use std::path::Path;
use std::time::SystemTime;

use memmap2::{Advice, Mmap, UncheckedAdvice};
use stylus_core::{Result, StylusError};

/// A file's bytes: mapped from disk or owned.
#[derive(Debug)]
pub struct FileBytes {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Mapped {
        map: Mmap,
        file: File,
        /// Length and modification time when mapped, to notice in-place changes.
        stamp: (u64, Option<SystemTime>),
    },
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Maps `path` read-only (see the module docs for the safety stance).
    pub fn map(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| StylusError::io(path, e))?;
        let metadata = file.metadata().map_err(|e| StylusError::io(path, e))?;
        if metadata.len() == 0 {
            // Zero-length maps are refused by some systems; the parser reports the empty file.
            return Ok(Self::from_vec(Vec::new()));
        }
        #[allow(unsafe_code)]
        // SAFETY: the file is opened and mapped read-only and nothing in this process writes it;
        // changes by other processes are covered by the stance in the module docs (values are
        // checked, in-place rewrites are detected, truncation ends the process with SIGBUS).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| StylusError::io(path, e))?;
        // A hint only: loads read tensors in file order, so readahead pays off.
        let _ = map.advise(Advice::Sequential);
        Ok(Self {
            inner: Inner::Mapped {
                map,
                file,
                stamp: (metadata.len(), metadata.modified().ok()),
            },
        })
    }

    /// Owned bytes (an in-memory image).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Self {
            inner: Inner::Owned(bytes),
        }
    }

    /// Drops the pages of `range` from this process's resident memory once they have been
    /// converted; touching them again re-reads the same bytes from the page cache. A no-op for
    /// owned bytes.
    pub fn release(&self, range: Range<usize>) {
        if let Inner::Mapped { map, .. } = &self.inner
            && !range.is_empty()
            && range.end <= map.len()
        {
            #[allow(unsafe_code)]
            // SAFETY: MADV_DONTNEED on a read-only shared file mapping only drops page-table
            // entries: the next access faults the identical file bytes back in, so no reference
            // into the map observes a change (unlike private or anonymous maps, which it zeroes).
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, range.len())
            };
        }
    }

    /// A [`StylusError::Safetensors`] if the mapped file's length or modification time changed
    /// since it was mapped (someone rewrote it in place during the load).
    pub fn check_unchanged(&self, path: &Path) -> Result<()> {
        let Inner::Mapped { file, stamp, .. } = &self.inner else {
            return Ok(());
        };
        let metadata = file.metadata().map_err(|e| StylusError::io(path, e))?;
        if (metadata.len(), metadata.modified().ok()) != *stamp {
            return Err(StylusError::Safetensors {
                path: path.to_path_buf(),
                message: "the file was modified while it was being loaded; load it again".into(),
                source: None,
            });
        }
        Ok(())
    }
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.inner {
            Inner::Mapped { map, .. } => map,
            Inner::Owned(bytes) => bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::time::Duration;

    use super::*;

    #[test]
    fn released_pages_read_back_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let bytes: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mapped = FileBytes::map(&path).unwrap();
        assert_eq!(&mapped[..], &bytes[..]);
        mapped.release(100..2 * 4096 + 7);
        mapped.release(0..mapped.len());
        assert_eq!(&mapped[..], &bytes[..]);
        mapped.check_unchanged(&path).unwrap();
    }

    #[test]
    fn an_in_place_rewrite_during_a_load_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, [1u8; 64]).unwrap();
        let mapped = FileBytes::map(&path).unwrap();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all(&[2u8; 8]).unwrap();
        // Timestamps can be coarser than this test is fast: move the mtime explicitly.
        file.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        let error = mapped.check_unchanged(&path).unwrap_err();
        assert!(
            matches!(&error, StylusError::Safetensors { path: p, message, source: None }
                if p == &path && message.contains("modified while it was being loaded")),
            "{error}"
        );
    }

    #[test]
    fn owned_and_empty_files_need_no_map() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.safetensors");
        std::fs::write(&path, []).unwrap();
        assert!(FileBytes::map(&path).unwrap().is_empty());
        let owned = FileBytes::from_vec(vec![1, 2, 3]);
        owned.release(0..3);
        assert_eq!(&owned[..], &[1, 2, 3]);
        owned.check_unchanged(&path).unwrap();
    }
}
