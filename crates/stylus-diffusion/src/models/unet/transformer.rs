//! diffusers `Transformer2DModel` (the "spatial transformer" of SD 1.x) with its
//! `BasicTransformerBlock`s and GEGLU feed-forward.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{
    Dropout, DropoutConfig, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;

use crate::models::attention::{Attention, AttentionConfig};
use crate::models::fused::group_norm;
use crate::models::resnet::conv1x1;

/// diffusers `GEGLU`: `a * gelu(gate)` where `[a, gate] = proj(x)`.
#[derive(Module, Debug)]
pub struct GeGlu<B: Backend> {
    /// Projection to twice the inner width.
    pub proj: Linear<B>,
}

impl<B: Backend> GeGlu<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let projected = self.proj.forward(x);
        let inner = projected.dims()[2] / 2;
        let a = projected.clone().narrow(2, 0, inner);
        let gate = projected.narrow(2, inner, inner);
        a * gelu(gate)
    }
}

/// diffusers `FeedForward`: `net.0` = GEGLU, `net.1` = dropout (inactive), `net.2` = output linear.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `(GEGLU, Dropout, Linear)`, so that weights are found at `net.0.proj` and `net.2`.
    pub net: (GeGlu<B>, Dropout, Linear<B>),
}

impl<B: Backend> FeedForward<B> {
    fn new(dim: usize, device: &B::Device) -> Self {
        let inner = dim * 4;
        Self {
            net: (
                GeGlu {
                    proj: LinearConfig::new(dim, inner * 2).init(device),
                },
                DropoutConfig::new(0.0).init(),
                LinearConfig::new(inner, dim).init(device),
            ),
        }
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.net.2.forward(self.net.0.forward(x))
    }
}

/// diffusers `BasicTransformerBlock`: self-attention, cross-attention, feed-forward, each
/// pre-LayerNorm with a residual connection.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    /// LayerNorm before self-attention.
    pub norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn1: Attention<B>,
    /// LayerNorm before cross-attention.
    pub norm2: LayerNorm<B>,
    /// Cross-attention to the text conditioning.
    pub attn2: Attention<B>,
    /// LayerNorm before the feed-forward.
    pub norm3: LayerNorm<B>,
    /// GEGLU feed-forward.
    pub ff: FeedForward<B>,
}

impl<B: Backend> BasicTransformerBlock<B> {
    fn new(dim: usize, heads: usize, context_dim: usize, device: &B::Device) -> Self {
        let attention = |context_dim: Option<usize>| {
            AttentionConfig {
                query_dim: dim,
                context_dim,
                heads,
                head_dim: dim / heads,
                qkv_bias: false,
            }
            .init(device)
        };
        let norm = || LayerNormConfig::new(dim).init(device);
        Self {
            norm1: norm(),
            attn1: attention(None),
            norm2: norm(),
            attn2: attention(Some(context_dim)),
            norm3: norm(),
            ff: FeedForward::new(dim, device),
        }
    }

    fn forward(&self, x: Tensor<B, 3>, context: &Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context.clone()))
            + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// diffusers `Transformer2DModel` with `use_linear_projection = false` (1x1 conv projections).
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    /// GroupNorm (eps 1e-6) on the input feature map.
    pub norm: GroupNorm<B>,
    /// 1x1 convolution into the transformer width.
    pub proj_in: Conv2d<B>,
    /// The transformer blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// 1x1 convolution back to the feature-map width.
    pub proj_out: Conv2d<B>,
}

impl<B: Backend> Transformer2DModel<B> {
    /// A spatial transformer over `channels` channels.
    pub fn new(
        channels: usize,
        heads: usize,
        depth: usize,
        context_dim: usize,
        norm_groups: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            norm: GroupNormConfig::new(norm_groups, channels)
                .with_epsilon(1e-6)
                .init(device),
            proj_in: conv1x1(channels, channels, device),
            transformer_blocks: (0..depth)
                .map(|_| BasicTransformerBlock::new(channels, heads, context_dim, device))
                .collect(),
            proj_out: conv1x1(channels, channels, device),
        }
    }

    /// `x + proj_out(blocks(proj_in(norm(x))))` on `[b, c, h, w]`, attending to `context`.
    pub fn forward(&self, x: Tensor<B, 4>, context: &Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, _, height, width] = x.dims();
        let hidden = self
            .proj_in
            .forward(group_norm(&self.norm, x.clone(), false));
        let inner = hidden.dims()[1];
        let mut tokens = hidden
            .permute([0, 2, 3, 1])
            .reshape([batch, height * width, inner]);
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context);
        }
        let hidden = tokens
            .reshape([batch, height, width, inner])
            .permute([0, 3, 1, 2]);
        self.proj_out.forward(hidden) + x
    }
}
