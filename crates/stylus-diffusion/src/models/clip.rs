//! The CLIP text encoder of SD 1.x (OpenAI CLIP ViT-L/14 text tower), as transformers'
//! `CLIPTextModel`: field names follow its module names (`text_model.embeddings.token_embedding`,
//! `text_model.encoder.layers.N.self_attn.q_proj`, `text_model.final_layer_norm`, ...).
//!
//! Entry point: [`ClipTextModel::forward`] with token ids `[batch, 77]` (an `Int` tensor, as the
//! CLIP tokenizer produces them); it returns the last hidden state (after the final LayerNorm, the
//! usual SD 1.x conditioning) and the penultimate layer's hidden state. [`ClipTextModel::encode`]
//! turns those into the conditioning for a given A1111-style "clip skip".

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::Deserialize;
use stylus_core::{Result, StylusError};

use super::attention::multi_head_attention;

/// The activation of the CLIP MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// Exact (erf) GELU.
    Gelu,
}

/// Hyper-parameters of the text encoder; field names follow transformers' `CLIPTextConfig`
/// (`text_encoder/config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    /// Vocabulary size (49408).
    pub vocab_size: usize,
    /// Width of the hidden states (768).
    pub hidden_size: usize,
    /// Width of the MLP (3072).
    pub intermediate_size: usize,
    /// Number of encoder layers (12).
    pub num_hidden_layers: usize,
    /// Number of attention heads (12).
    pub num_attention_heads: usize,
    /// Number of positions (77).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon (1e-5).
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

fn default_layer_norm_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// The SD 1.5 text encoder (CLIP ViT-L/14).
    pub fn v1_5() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }

    /// Checks the values the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(StylusError::InvalidArgument(format!(
                "CLIP hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.num_hidden_layers < 2 {
            return Err(StylusError::InvalidArgument(
                "CLIP needs at least 2 layers (the penultimate hidden state is an output)".into(),
            ));
        }
        Ok(())
    }

    /// Builds the model with uninitialized (lazily random) weights on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipTextModel<B> {
        let linear = |d_in: usize, d_out: usize| LinearConfig::new(d_in, d_out).init(device);
        let layer_norm = || {
            LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                self_attn: ClipAttention {
                    q_proj: linear(self.hidden_size, self.hidden_size),
                    k_proj: linear(self.hidden_size, self.hidden_size),
                    v_proj: linear(self.hidden_size, self.hidden_size),
                    out_proj: linear(self.hidden_size, self.hidden_size),
                    heads: self.num_attention_heads,
                },
                layer_norm1: layer_norm(),
                mlp: ClipMlp {
                    fc1: linear(self.hidden_size, self.intermediate_size),
                    fc2: linear(self.intermediate_size, self.hidden_size),
                    quick_gelu: self.hidden_act == ClipActivation::QuickGelu,
                },
                layer_norm2: layer_norm(),
            })
            .collect();
        ClipTextModel {
            text_model: ClipTextTransformer {
                embeddings: ClipTextEmbeddings {
                    token_embedding: EmbeddingConfig::new(self.vocab_size, self.hidden_size)
                        .init(device),
                    position_embedding: EmbeddingConfig::new(
                        self.max_position_embeddings,
                        self.hidden_size,
                    )
                    .init(device),
                },
                encoder: ClipEncoder { layers },
                final_layer_norm: layer_norm(),
            },
        }
    }
}

/// transformers `CLIPTextModel`: the root holds `text_model`.
#[derive(Module, Debug)]
pub struct ClipTextModel<B: Backend> {
    /// transformers `CLIPTextTransformer`.
    pub text_model: ClipTextTransformer<B>,
}

/// transformers `CLIPTextTransformer`.
#[derive(Module, Debug)]
pub struct ClipTextTransformer<B: Backend> {
    /// Token and position embeddings.
    pub embeddings: ClipTextEmbeddings<B>,
    /// The transformer layers.
    pub encoder: ClipEncoder<B>,
    /// LayerNorm applied to the last layer's output.
    pub final_layer_norm: LayerNorm<B>,
}

/// transformers `CLIPTextEmbeddings`.
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings<B: Backend> {
    /// `[vocab, hidden]`.
    pub token_embedding: Embedding<B>,
    /// `[positions, hidden]`.
    pub position_embedding: Embedding<B>,
}

/// transformers `CLIPEncoder`.
#[derive(Module, Debug)]
pub struct ClipEncoder<B: Backend> {
    /// `layers.N`.
    pub layers: Vec<ClipEncoderLayer<B>>,
}

/// transformers `CLIPEncoderLayer` (pre-LayerNorm transformer block).
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    /// Causal self-attention.
    pub self_attn: ClipAttention<B>,
    /// LayerNorm before attention.
    pub layer_norm1: LayerNorm<B>,
    /// Feed-forward.
    pub mlp: ClipMlp<B>,
    /// LayerNorm before the MLP.
    pub layer_norm2: LayerNorm<B>,
}

/// transformers `CLIPAttention` (all projections with bias).
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Output projection.
    pub out_proj: Linear<B>,
    /// Number of heads.
    pub heads: usize,
}

/// transformers `CLIPMLP`.
#[derive(Module, Debug)]
pub struct ClipMlp<B: Backend> {
    /// Expansion.
    pub fc1: Linear<B>,
    /// Projection back to the hidden width.
    pub fc2: Linear<B>,
    /// QuickGELU (true) or exact GELU (false).
    pub quick_gelu: bool,
}

/// Outputs of [`ClipTextModel::forward`].
#[derive(Debug, Clone)]
pub struct ClipTextOutput<B: Backend> {
    /// The last layer's output after `final_layer_norm`: `[batch, tokens, hidden]`. This is the
    /// standard SD 1.x conditioning (transformers `last_hidden_state`).
    pub last_hidden_state: Tensor<B, 3>,
    /// The second-to-last layer's output, *without* the final LayerNorm (transformers
    /// `hidden_states[-2]`).
    pub penultimate_hidden_state: Tensor<B, 3>,
}

impl<B: Backend> ClipTextModel<B> {
    /// Runs the encoder on token ids `[batch, tokens]` (tokens <= `max_position_embeddings`).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> ClipTextOutput<B> {
        let model = &self.text_model;
        let [_, tokens] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..tokens as i64, &device).unsqueeze::<2>();
        let mut hidden = model.embeddings.token_embedding.forward(input_ids)
            + model.embeddings.position_embedding.forward(positions);
        let layer_count = model.encoder.layers.len();
        let mut penultimate = None;
        for (index, layer) in model.encoder.layers.iter().enumerate() {
            hidden = layer.forward(hidden);
            if index + 2 == layer_count {
                penultimate = Some(hidden.clone());
            }
        }
        ClipTextOutput {
            last_hidden_state: model.final_layer_norm.forward(hidden.clone()),
            // A one-layer model has no penultimate layer; its embeddings play that role.
            penultimate_hidden_state: penultimate.unwrap_or(hidden),
        }
    }

    /// The UNet conditioning for token ids `[batch, tokens]` with A1111's "clip skip":
    /// 1 = the last layer (SD 1.x default), 2 = the penultimate layer passed through
    /// `final_layer_norm` (what A1111 and diffusers' `clip_skip=1` do).
    pub fn encode(&self, input_ids: Tensor<B, 2, Int>, clip_skip: u32) -> Result<Tensor<B, 3>> {
        let output = self.forward(input_ids);
        match clip_skip {
            0 | 1 => Ok(output.last_hidden_state),
            2 => Ok(self
                .text_model
                .final_layer_norm
                .forward(output.penultimate_hidden_state)),
            other => Err(StylusError::InvalidArgument(format!(
                "clip skip {other} is not supported (use 1 or 2)"
            ))),
        }
    }
}

impl<B: Backend> ClipEncoderLayer<B> {
    fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let attended = self
            .self_attn
            .forward(self.layer_norm1.forward(hidden.clone()));
        let hidden = hidden + attended;
        let mlp = self.mlp.forward(self.layer_norm2.forward(hidden.clone()));
        hidden + mlp
    }
}

impl<B: Backend> ClipAttention<B> {
    fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let query = self.q_proj.forward(hidden.clone());
        let key = self.k_proj.forward(hidden.clone());
        let value = self.v_proj.forward(hidden);
        // CLIP's text tower is causal: token i sees tokens 0..=i only.
        self.out_proj
            .forward(multi_head_attention(query, key, value, self.heads, true))
    }
}

impl<B: Backend> ClipMlp<B> {
    fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = self.fc1.forward(hidden);
        let hidden = if self.quick_gelu {
            hidden.clone() * sigmoid(hidden * 1.702)
        } else {
            gelu(hidden)
        };
        self.fc2.forward(hidden)
    }
}
