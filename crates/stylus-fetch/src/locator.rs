//! [`FetchingLocator`]: the locator of `generate --fetch`. It looks in the user's LoRA folder
//! first (read only), then in the adapter cache, then downloads into the cache.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use stylus_core::{AdapterLocator, LocatedFile, Result, WeightedAdapter};

use crate::{FetchError, FetchRequest, Fetched, Fetcher};

/// An [`AdapterLocator`] that fetches what the folder locator does not find. Every file it hands
/// out stays pinned in the cache while the locator lives, so eviction (by this process or
/// another one) cannot remove a file a render is about to read. Offline, an adapter that is not
/// cached is "not found", so the pipeline lists every missing file at once as without fetching.
pub struct FetchingLocator {
    folder: Option<Arc<dyn AdapterLocator>>,
    fetcher: Fetcher,
    pins: Mutex<Vec<Fetched>>,
}

impl std::fmt::Debug for FetchingLocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchingLocator")
            .field("folder", &self.folder.is_some())
            .field("cache", &self.fetcher.cache().root())
            .finish()
    }
}

impl FetchingLocator {
    pub fn new(folder: Option<Arc<dyn AdapterLocator>>, fetcher: Fetcher) -> Self {
        Self {
            folder,
            fetcher,
            pins: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl AdapterLocator for FetchingLocator {
    async fn locate(&self, adapter: &WeightedAdapter) -> Result<Option<LocatedFile>> {
        if let Some(folder) = &self.folder
            && let Some(found) = folder.locate(adapter).await?
        {
            return Ok(Some(found));
        }
        let request = FetchRequest::from_adapter(adapter)?;
        match self.fetcher.fetch(&request).await {
            Ok(fetched) => {
                let path = fetched.path.clone();
                self.pins
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(fetched);
                Ok(Some(LocatedFile {
                    path,
                    tensor_sha256: None,
                }))
            }
            Err(FetchError::Offline { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}
