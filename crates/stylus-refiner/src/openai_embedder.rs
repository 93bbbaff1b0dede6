//! `OpenAiEmbedder`: sentence embeddings from an OpenAI-compatible `/embeddings` endpoint
//! (OpenAI `text-embedding-3-*`, vLLM, Ollama, llama.cpp's server, ...), batched, retried by the
//! shared client, checked for dimension and finiteness, and L2-normalized.

use async_trait::async_trait;
use stylus_core::openai::OpenAiClient;
use stylus_core::{Embedder, Result, StylusError};

/// An [`Embedder`] backed by an OpenAI-compatible embeddings API.
#[derive(Debug, Clone)]
pub struct OpenAiEmbedder {
    client: OpenAiClient,
    dim: usize,
    batch_size: usize,
}

impl OpenAiEmbedder {
    /// Texts per request when none is given (OpenAI accepts up to 2,048 inputs; smaller batches
    /// keep one failed request cheap to retry).
    pub const DEFAULT_BATCH_SIZE: usize = 64;

    /// An embedder for a model whose vectors have `dim` dimensions (1,536 for
    /// `text-embedding-3-small`, 3,072 for `text-embedding-3-large`).
    pub fn new(client: OpenAiClient, dim: usize, batch_size: usize) -> Result<Self> {
        if dim == 0 || batch_size == 0 {
            return Err(StylusError::InvalidArgument(format!(
                "OpenAI embedder: dimension ({dim}) and batch size ({batch_size}) must be positive"
            )));
        }
        Ok(Self {
            client,
            dim,
            batch_size,
        })
    }

    /// Asks the server to embed one short text to learn the model's dimension.
    pub async fn probe(client: OpenAiClient, batch_size: usize) -> Result<Self> {
        let vectors = client
            .embeddings(&["dimension probe".to_string()], 1)
            .await?;
        let dim = vectors.first().map_or(0, Vec::len);
        if dim == 0 {
            return Err(StylusError::ModelReply {
                service: client.service(),
                attempts: 1,
                message: "the probe embedding is empty".to_string(),
            });
        }
        Self::new(client, dim, batch_size)
    }

    fn unusable(&self, message: String) -> StylusError {
        StylusError::ModelReply {
            service: self.client.service(),
            attempts: 1,
            message,
        }
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    /// `openai:<model>:<dim>`: another model, or the same model cut to another dimension, is
    /// another embedder.
    fn id(&self) -> String {
        format!("openai:{}:{}", self.client.model(), self.dim)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut vectors = self.client.embeddings(texts, self.batch_size).await?;
        for (i, vector) in vectors.iter_mut().enumerate() {
            if vector.len() != self.dim {
                return Err(StylusError::Dimension {
                    what: format!("embedding of text {i} from {}", self.client.service()),
                    expected: self.dim,
                    got: vector.len(),
                });
            }
            if vector.iter().any(|x| !x.is_finite()) {
                return Err(self.unusable(format!("embedding of text {i} is not finite")));
            }
            let norm = vector
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>()
                .sqrt();
            if norm == 0.0 {
                return Err(self.unusable(format!("embedding of text {i} is all zeros")));
            }
            for x in vector.iter_mut() {
                *x = (f64::from(*x) / norm) as f32;
            }
        }
        Ok(vectors)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use stylus_core::openai::OpenAiConfig;
    use stylus_core::openai::testing::{StubReply, StubServer};

    use super::*;

    fn client(server: &StubServer) -> OpenAiClient {
        OpenAiClient::new(OpenAiConfig {
            max_retries: 2,
            initial_backoff_ms: 1,
            max_backoff_ms: 5,
            timeout_secs: 5.0,
            ..OpenAiConfig::new(server.base_url(), "stub-embed")
        })
        .unwrap()
    }

    /// Answers every text with `[len, 2 len, 2 len]` (norm 3 len), so the expected unit
    /// vector is `[1/3, 2/3, 2/3]` and the order is checkable.
    async fn length_server() -> StubServer {
        StubServer::start(|_, request| {
            let inputs = request.json()["input"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let vectors: Vec<Vec<f32>> = inputs
                .iter()
                .map(|t| {
                    let n = t.as_str().unwrap_or_default().len() as f32;
                    vec![n, 2.0 * n, 2.0 * n]
                })
                .collect();
            StubReply::embeddings(&vectors)
        })
        .await
    }

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|t| t.to_string()).collect()
    }

    #[tokio::test]
    async fn embeds_in_batches_l2_normalized_in_order() {
        let server = length_server().await;
        let embedder = OpenAiEmbedder::new(client(&server), 3, 2).unwrap();
        assert_eq!(embedder.id(), "openai:stub-embed:3");
        assert_eq!(embedder.dim(), 3);
        let vectors = embedder
            .embed(&texts(&["a", "bb", "ccc", "dddd", "eeeee"]))
            .await
            .unwrap();
        assert_eq!(vectors.len(), 5);
        for v in &vectors {
            let expected = [1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0];
            for (x, e) in v.iter().zip(expected) {
                assert!((x - e).abs() < 1e-6, "{v:?}");
            }
        }
        let requests = server.requests();
        assert_eq!(requests.len(), 3, "5 texts in batches of 2");
        assert_eq!(requests[1].json()["input"], json!(["ccc", "dddd"]));
        assert_eq!(requests[0].json()["encoding_format"], "float");
        assert!(embedder.embed(&[]).await.unwrap().is_empty());
        assert_eq!(server.request_count(), 3, "no request for no texts");
    }

    #[tokio::test]
    async fn order_within_a_batch_follows_the_inputs() {
        let server = StubServer::sequence(vec![StubReply::json(&json!({"data": [
            {"index": 1, "embedding": [0.0, 5.0]},
            {"index": 0, "embedding": [2.0, 0.0]},
        ]}))])
        .await;
        let embedder = OpenAiEmbedder::new(client(&server), 2, 8).unwrap();
        let vectors = embedder.embed(&texts(&["x", "y"])).await.unwrap();
        assert_eq!(vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    }

    #[tokio::test]
    async fn wrong_dimension_is_an_error() {
        let server = length_server().await;
        let embedder = OpenAiEmbedder::new(client(&server), 4, 8).unwrap();
        let err = embedder.embed(&texts(&["a"])).await.unwrap_err();
        assert!(
            matches!(
                err,
                StylusError::Dimension {
                    expected: 4,
                    got: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn zero_and_non_finite_vectors_are_errors() {
        let zero = StubServer::sequence(vec![StubReply::embeddings(&[vec![0.0, 0.0]])]).await;
        let err = OpenAiEmbedder::new(client(&zero), 2, 8)
            .unwrap()
            .embed(&texts(&["a"]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("all zeros"), "{err}");

        // 1e39 overflows f32 to infinity.
        let huge = StubServer::sequence(vec![StubReply::status(
            200,
            r#"{"data": [{"index": 0, "embedding": [1e39, 1.0]}]}"#,
        )])
        .await;
        let err = OpenAiEmbedder::new(client(&huge), 2, 8)
            .unwrap()
            .embed(&texts(&["a"]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not finite"), "{err}");
    }

    #[tokio::test]
    async fn probe_learns_the_dimension() {
        let server = length_server().await;
        let embedder = OpenAiEmbedder::probe(client(&server), 16).await.unwrap();
        assert_eq!(embedder.dim(), 3);
        assert_eq!(embedder.id(), "openai:stub-embed:3");

        let empty = StubServer::sequence(vec![StubReply::embeddings(&[vec![]])]).await;
        assert!(OpenAiEmbedder::probe(client(&empty), 16).await.is_err());
    }

    #[tokio::test]
    async fn rate_limits_are_retried_and_server_errors_end_in_an_http_error() {
        let server = StubServer::sequence(vec![
            StubReply::error(429, "slow down"),
            StubReply::embeddings(&[vec![3.0, 4.0]]),
        ])
        .await;
        let vectors = OpenAiEmbedder::new(client(&server), 2, 8)
            .unwrap()
            .embed(&texts(&["a"]))
            .await
            .unwrap();
        assert_eq!(vectors, vec![vec![0.6, 0.8]]);

        let broken = StubServer::sequence(vec![StubReply::error(502, "bad gateway")]).await;
        let err = OpenAiEmbedder::new(client(&broken), 2, 8)
            .unwrap()
            .embed(&texts(&["a"]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StylusError::Http {
                    status: Some(502),
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(broken.request_count(), 3);
    }

    #[tokio::test]
    async fn a_slow_server_times_out() {
        let server = StubServer::sequence(vec![
            StubReply::embeddings(&[vec![1.0]]).after(Duration::from_secs(3)),
        ])
        .await;
        let client = OpenAiClient::new(OpenAiConfig {
            timeout_secs: 0.2,
            max_retries: 0,
            ..OpenAiConfig::new(server.base_url(), "stub-embed")
        })
        .unwrap();
        let err = OpenAiEmbedder::new(client, 1, 8)
            .unwrap()
            .embed(&texts(&["a"]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    #[test]
    fn zero_dimension_or_batch_is_refused() {
        let client = OpenAiClient::new(OpenAiConfig::new("http://127.0.0.1:1/v1", "m")).unwrap();
        assert!(OpenAiEmbedder::new(client.clone(), 0, 8).is_err());
        assert!(OpenAiEmbedder::new(client, 8, 0).is_err());
    }
}
