//! The BERT encoder (transformers' `BertModel` without the pooler) in burn, generic over the
//! backend. Field names follow the transformers module names so weights map one to one.

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use stylus_core::Result;

use super::config::BertConfig;
use super::weights::WeightFile;

/// `embeddings.*`: word + position + token type embeddings, then LayerNorm.
#[derive(Debug)]
struct BertEmbeddings<B: Backend> {
    word_embeddings: Embedding<B>,
    position_embeddings: Embedding<B>,
    token_type_embeddings: Embedding<B>,
    layer_norm: LayerNorm<B>,
}

/// `encoder.layer.N.*`: self-attention and feed-forward, each followed by residual + LayerNorm.
#[derive(Debug)]
struct BertLayer<B: Backend> {
    /// `attention.self.query/key/value`.
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    /// `attention.output.dense` and `attention.output.LayerNorm`.
    attention_output: Linear<B>,
    attention_layer_norm: LayerNorm<B>,
    /// `intermediate.dense` (followed by GELU).
    intermediate: Linear<B>,
    /// `output.dense` and `output.LayerNorm`.
    output: Linear<B>,
    output_layer_norm: LayerNorm<B>,
    num_heads: usize,
}

/// A BERT encoder with loaded weights.
#[derive(Debug)]
pub struct BertModel<B: Backend> {
    embeddings: BertEmbeddings<B>,
    layers: Vec<BertLayer<B>>,
    config: BertConfig,
}

impl<B: Backend> BertModel<B> {
    /// Builds the encoder from `weights`, taking every tensor `config` implies.
    pub(crate) fn load(
        config: &BertConfig,
        weights: &mut WeightFile<'_>,
        device: &B::Device,
    ) -> Result<Self> {
        let hidden = config.hidden_size;
        let mut loader = Loader {
            weights,
            device,
            eps: config.layer_norm_eps,
        };
        let embeddings = BertEmbeddings {
            word_embeddings: loader.embedding(
                "embeddings.word_embeddings",
                config.vocab_size,
                hidden,
            )?,
            position_embeddings: loader.embedding(
                "embeddings.position_embeddings",
                config.max_position_embeddings,
                hidden,
            )?,
            token_type_embeddings: loader.embedding(
                "embeddings.token_type_embeddings",
                config.type_vocab_size,
                hidden,
            )?,
            layer_norm: loader.layer_norm("embeddings.LayerNorm", hidden)?,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|n| {
                let p = format!("encoder.layer.{n}");
                Ok(BertLayer {
                    query: loader.linear(&format!("{p}.attention.self.query"), hidden, hidden)?,
                    key: loader.linear(&format!("{p}.attention.self.key"), hidden, hidden)?,
                    value: loader.linear(&format!("{p}.attention.self.value"), hidden, hidden)?,
                    attention_output: loader.linear(
                        &format!("{p}.attention.output.dense"),
                        hidden,
                        hidden,
                    )?,
                    attention_layer_norm: loader
                        .layer_norm(&format!("{p}.attention.output.LayerNorm"), hidden)?,
                    intermediate: loader.linear(
                        &format!("{p}.intermediate.dense"),
                        hidden,
                        config.intermediate_size,
                    )?,
                    output: loader.linear(
                        &format!("{p}.output.dense"),
                        config.intermediate_size,
                        hidden,
                    )?,
                    output_layer_norm: loader
                        .layer_norm(&format!("{p}.output.LayerNorm"), hidden)?,
                    num_heads: config.num_attention_heads,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertModel {
            embeddings,
            layers,
            config: config.clone(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Token states `[batch, seq, hidden]` for `input_ids` and `token_type_ids` (`[batch, seq]`).
    /// `padding` (`[batch, seq]`) is true at padding positions; no token attends to them.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
        padding: Tensor<B, 2, Bool>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device).reshape([1, seq]);
        let e = &self.embeddings;
        let embedded = e.word_embeddings.forward(input_ids)
            + e.position_embeddings.forward(positions)
            + e.token_type_embeddings.forward(token_type_ids);
        let mut hidden = e.layer_norm.forward(embedded);

        // One mask for every head and query row: [batch, 1, 1, seq] broadcast by the kernel.
        let key_mask = padding.reshape([batch, 1, 1, seq]);
        for layer in &self.layers {
            hidden = layer.forward(hidden, key_mask.clone());
        }
        hidden
    }
}

impl<B: Backend> BertLayer<B> {
    fn forward(&self, hidden: Tensor<B, 3>, key_mask: Tensor<B, 4, Bool>) -> Tensor<B, 3> {
        let [batch, seq, width] = hidden.dims();
        let heads = self.num_heads;
        let split_heads = |t: Tensor<B, 3>| {
            t.reshape([batch, seq, heads, width / heads])
                .swap_dims(1, 2)
        };
        let query = split_heads(self.query.forward(hidden.clone()));
        let key = split_heads(self.key.forward(hidden.clone()));
        let value = split_heads(self.value.forward(hidden.clone()));
        let context = attention(
            query,
            key,
            value,
            Some(key_mask),
            None,
            AttentionModuleOptions::default(),
        )
        .swap_dims(1, 2)
        .reshape([batch, seq, width]);
        let attended = self
            .attention_layer_norm
            .forward(self.attention_output.forward(context) + hidden);
        let expanded = gelu(self.intermediate.forward(attended.clone()));
        self.output_layer_norm
            .forward(self.output.forward(expanded) + attended)
    }
}

/// Turns named tensors of the weight file into burn modules on one device.
struct Loader<'w, 'a, B: Backend> {
    weights: &'w mut WeightFile<'a>,
    device: &'w B::Device,
    eps: f64,
}

impl<B: Backend> Loader<'_, '_, B> {
    fn tensor<const D: usize>(&self, data: TensorData) -> Param<Tensor<B, D>> {
        Param::from_tensor(Tensor::from_data(data, self.device))
    }

    fn embedding(&mut self, name: &str, rows: usize, width: usize) -> Result<Embedding<B>> {
        let data = self
            .weights
            .take(&format!("{name}.weight"), &[rows, width])?;
        Ok(Embedding {
            weight: self.tensor(data),
        })
    }

    fn linear(&mut self, name: &str, d_in: usize, d_out: usize) -> Result<Linear<B>> {
        let weight = self
            .weights
            .take_linear_weight(&format!("{name}.weight"), d_in, d_out)?;
        let bias = self.weights.take(&format!("{name}.bias"), &[d_out])?;
        Ok(Linear {
            weight: self.tensor(weight),
            bias: Some(self.tensor(bias)),
        })
    }

    fn layer_norm(&mut self, name: &str, width: usize) -> Result<LayerNorm<B>> {
        let gamma = self.weights.take(&format!("{name}.weight"), &[width])?;
        let beta = self.weights.take(&format!("{name}.bias"), &[width])?;
        let mut norm = LayerNormConfig::new(width)
            .with_epsilon(self.eps)
            .init(self.device);
        norm.gamma = self.tensor(gamma);
        norm.beta = Some(self.tensor(beta));
        Ok(norm)
    }
}
