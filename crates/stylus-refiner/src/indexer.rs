//! Cards to documents to vectors, reusing what an earlier store already holds.
//!
//! An incremental refresh refines again only cards that are new or changed (by card content hash
//! and refiner id, see [`StylusDocs::reusable_doc`]) and embeds again only documents whose exact
//! embedding text is new or whose store came from another embedder.

use std::collections::HashMap;

use futures_util::stream::{self, StreamExt};
use stylus_core::{AdapterCard, AdapterDoc, AdapterId, Embedder, Refiner, Result, StylusError};

use crate::store::StylusDocs;

/// Texts handed to the embedder per call: several of a BERT embedder's batches (32), so it runs
/// them in parallel and pads less after sorting by length; progress moves this often.
pub const EMBED_BATCH: usize = 256;

/// What [`refine_cards`] and [`embed_docs`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshCounts {
    /// Documents taken unchanged from the previous store.
    pub docs_reused: usize,
    /// Documents the refiner produced now.
    pub docs_refined: usize,
    /// Vectors taken from the previous store.
    pub vectors_reused: usize,
    /// Vectors the embedder produced now.
    pub vectors_embedded: usize,
}

/// Refines `cards`, reusing valid documents of `previous`, with up to `concurrency` cards in
/// flight (a network refiner waits on its server; the card refiner does not wait at all).
/// Documents come back in card order; the first failure stops the run with its error (a
/// caching refiner, like the VLM refiner, keeps what it got, so a re-run resumes). `progress`
/// gets the number of cards done.
pub async fn refine_cards(
    cards: &[AdapterCard],
    refiner: &dyn Refiner,
    previous: Option<&StylusDocs>,
    counts: &mut RefreshCounts,
    concurrency: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<AdapterDoc>> {
    let refiner_id = refiner.id();
    let jobs = cards.iter().map(|card| {
        let reused = previous.and_then(|store| {
            store
                .reusable_doc(card, &refiner_id)
                .map(|i| store.docs()[i].clone())
        });
        async move {
            match reused {
                Some(doc) => Ok((doc, true)),
                None => match refiner.refine(card).await {
                    Ok(doc) => Ok((doc, false)),
                    Err(e) => Err(StylusError::adapter(
                        &card.id,
                        format!("refining failed: {e}"),
                    )),
                },
            }
        }
    });
    let mut results = stream::iter(jobs).buffered(concurrency.max(1));
    let mut docs = Vec::with_capacity(cards.len());
    while let Some(result) = results.next().await {
        let (doc, reused) = result?;
        if reused {
            counts.docs_reused += 1;
        } else {
            counts.docs_refined += 1;
        }
        docs.push(doc);
        progress(docs.len());
    }
    Ok(docs)
}

/// Embeds the documents' embedding texts into one row-major `[docs.len(), dim]` buffer, reusing
/// the vectors of `previous` for identical texts when it was built by the same embedder.
/// `progress` gets the number of documents done.
pub async fn embed_docs(
    docs: &[AdapterDoc],
    embedder: &dyn Embedder,
    previous: Option<&StylusDocs>,
    counts: &mut RefreshCounts,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<f32>> {
    let dim = embedder.dim();
    let embedder_id = embedder.id();
    let previous = previous.filter(|p| {
        crate::embedder_id::same_embedder(p.embedder_id(), &embedder_id) && p.dim() == dim
    });
    let stored: HashMap<&AdapterId, usize> = previous
        .map(|p| {
            p.docs()
                .iter()
                .enumerate()
                .map(|(i, d)| (d.id(), i))
                .collect()
        })
        .unwrap_or_default();

    let mut vectors = vec![0f32; docs.len() * dim];
    let mut pending: Vec<usize> = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let old = stored.get(doc.id()).copied().filter(|&j| {
            previous.is_some_and(|p| p.docs()[j].embedding_text == doc.embedding_text)
        });
        match (old, previous) {
            (Some(j), Some(p)) => {
                vectors[i * dim..(i + 1) * dim].copy_from_slice(&p.vector(j)?);
                counts.vectors_reused += 1;
            }
            _ => pending.push(i),
        }
    }
    let mut done = counts.vectors_reused;
    progress(done);
    for batch in pending.chunks(EMBED_BATCH) {
        let texts: Vec<String> = batch
            .iter()
            .map(|&i| docs[i].embedding_text.clone())
            .collect();
        let embedded = embedder.embed(&texts).await?;
        if embedded.len() != batch.len() {
            return Err(StylusError::InvalidArgument(format!(
                "embedder {embedder_id} returned {} vectors for {} texts",
                embedded.len(),
                batch.len()
            )));
        }
        for (&i, vector) in batch.iter().zip(embedded) {
            if vector.len() != dim {
                return Err(StylusError::Dimension {
                    what: format!("embedder {embedder_id}"),
                    expected: dim,
                    got: vector.len(),
                });
            }
            vectors[i * dim..(i + 1) * dim].copy_from_slice(&vector);
        }
        counts.vectors_embedded += batch.len();
        done += batch.len();
        progress(done);
    }
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::card_refiner::CardRefiner;
    use crate::lexical::LexicalEmbedder;
    use crate::store::NewStore;

    /// Counts the texts it embeds; delegates to a real lexical embedder.
    struct Counting {
        inner: LexicalEmbedder,
        texts: AtomicUsize,
    }

    #[async_trait]
    impl Embedder for Counting {
        fn id(&self) -> String {
            self.inner.id()
        }
        fn dim(&self) -> usize {
            self.inner.dim()
        }
        async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
            self.texts.fetch_add(texts.len(), Ordering::SeqCst);
            self.inner.embed(texts).await
        }
    }

    fn cards(n: u64) -> Vec<AdapterCard> {
        (0..n)
            .map(|i| {
                let mut card = AdapterCard::new(AdapterId::Civitai(i), format!("card {i}"), "LORA");
                card.tags = vec![format!("tag{i}")];
                card
            })
            .collect()
    }

    #[tokio::test]
    async fn refresh_redoes_only_new_and_changed_cards() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("store");
        let refiner = CardRefiner::default();
        let embedder = Counting {
            inner: LexicalEmbedder::fit(&["card tag"], 64).unwrap(),
            texts: AtomicUsize::new(0),
        };
        let mut counts = RefreshCounts::default();
        let first = cards(5);
        let docs = refine_cards(&first, &refiner, None, &mut counts, 1, &|_| {})
            .await
            .unwrap();
        let vectors = embed_docs(&docs, &embedder, None, &mut counts, &|_| {})
            .await
            .unwrap();
        assert_eq!(counts.docs_refined, 5);
        assert_eq!(counts.vectors_embedded, 5);
        let store = StylusDocs::write(
            &dir,
            NewStore {
                embedder_id: embedder.id(),
                dim: embedder.dim(),
                docs,
                vectors,
                extra_files: Vec::new(),
            },
        )
        .unwrap();

        let mut second = cards(6);
        second[2].tags.push("changed".into());
        let mut counts = RefreshCounts::default();
        let docs = refine_cards(&second, &refiner, Some(&store), &mut counts, 4, &|_| {})
            .await
            .unwrap();
        let done = AtomicUsize::new(0);
        let vectors = embed_docs(&docs, &embedder, Some(&store), &mut counts, &|n| {
            done.store(n, Ordering::SeqCst)
        })
        .await
        .unwrap();
        assert_eq!(
            counts,
            RefreshCounts {
                docs_reused: 4,
                docs_refined: 2,
                vectors_reused: 4,
                vectors_embedded: 2
            }
        );
        assert_eq!(done.load(Ordering::SeqCst), 6);
        assert_eq!(embedder.texts.load(Ordering::SeqCst), 5 + 2);
        // Reused vectors are the stored ones; new ones equal a fresh embedding.
        assert_eq!(&vectors[..64], store.vector(0).unwrap().as_ref());
        let fresh = embedder.inner.embed_text(&docs[5].embedding_text);
        assert_eq!(&vectors[5 * 64..], fresh.as_slice());

        // Another embedder: every vector is redone.
        let other = LexicalEmbedder::fit(&["other corpus"], 64).unwrap();
        let mut counts = RefreshCounts::default();
        embed_docs(&docs, &other, Some(&store), &mut counts, &|_| {})
            .await
            .unwrap();
        assert_eq!((counts.vectors_reused, counts.vectors_embedded), (0, 6));
    }
}
