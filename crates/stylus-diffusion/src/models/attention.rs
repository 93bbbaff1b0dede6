//! Multi-head attention as diffusers' `Attention` module: `to_q`, `to_k`, `to_v`, `to_out.0`.
//!
//! Used for the UNet's self- and cross-attention (`attn1`, `attn2`) and, with a `group_norm` and a
//! residual connection, for the VAE mid-block attention ([`VaeAttention`]). The softmax runs
//! through burn's fused [`burn::tensor::module::attention`].

use burn::module::Module;
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

/// Scaled dot-product attention over `heads` heads of `[batch, tokens, heads * head_dim]` inputs.
///
/// `query` is `[b, n, h*d]`, `key`/`value` are `[b, m, h*d]`; the result is `[b, n, h*d]`.
pub fn multi_head_attention<B: Backend>(
    query: Tensor<B, 3>,
    key: Tensor<B, 3>,
    value: Tensor<B, 3>,
    heads: usize,
    is_causal: bool,
) -> Tensor<B, 3> {
    let [batch, query_len, width] = query.dims();
    let key_len = key.dims()[1];
    let head_dim = width / heads;
    let split =
        |t: Tensor<B, 3>, len: usize| t.reshape([batch, len, heads, head_dim]).swap_dims(1, 2);
    let options = AttentionModuleOptions {
        is_causal,
        ..Default::default()
    };
    let out = attention(
        split(query, query_len),
        split(key, key_len),
        split(value, key_len),
        None,
        None,
        options,
    );
    out.swap_dims(1, 2).reshape([batch, query_len, width])
}

/// Configuration of an [`Attention`] layer.
#[derive(Debug, Clone)]
pub struct AttentionConfig {
    /// Width of the queries (and of the output).
    pub query_dim: usize,
    /// Width of the keys/values source; `None` for self-attention.
    pub context_dim: Option<usize>,
    /// Number of heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Whether `to_q/to_k/to_v` have a bias (false in the UNet, true in the VAE).
    pub qkv_bias: bool,
}

impl AttentionConfig {
    /// Builds the layer on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Attention<B> {
        let inner = self.heads * self.head_dim;
        let context_dim = self.context_dim.unwrap_or(self.query_dim);
        let linear = |d_in: usize, d_out: usize, bias: bool| {
            LinearConfig::new(d_in, d_out).with_bias(bias).init(device)
        };
        Attention {
            to_q: linear(self.query_dim, inner, self.qkv_bias),
            to_k: linear(context_dim, inner, self.qkv_bias),
            to_v: linear(context_dim, inner, self.qkv_bias),
            to_out: vec![linear(inner, self.query_dim, true)],
            heads: self.heads,
        }
    }
}

/// diffusers `Attention` (the part with weights): query/key/value projections and `to_out.0`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection.
    pub to_q: Linear<B>,
    /// Key projection.
    pub to_k: Linear<B>,
    /// Value projection.
    pub to_v: Linear<B>,
    /// Output projection; a one-element list so that its path is `to_out.0` like diffusers.
    pub to_out: Vec<Linear<B>>,
    /// Number of heads.
    pub heads: usize,
}

impl<B: Backend> Attention<B> {
    /// Attends `hidden` `[b, n, query_dim]` to `context` `[b, m, context_dim]` (or to itself).
    pub fn forward(&self, hidden: Tensor<B, 3>, context: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let context = context.unwrap_or_else(|| hidden.clone());
        let query = self.to_q.forward(hidden);
        let key = self.to_k.forward(context.clone());
        let value = self.to_v.forward(context);
        let out = multi_head_attention(query, key, value, self.heads, false);
        self.to_out[0].forward(out)
    }
}

/// The VAE's spatial self-attention: diffusers `Attention` with `group_norm`, one head and a
/// residual connection, applied to `[b, c, h, w]` feature maps.
#[derive(Module, Debug)]
pub struct VaeAttention<B: Backend> {
    /// GroupNorm applied before the projections.
    pub group_norm: GroupNorm<B>,
    /// Query projection (with bias).
    pub to_q: Linear<B>,
    /// Key projection (with bias).
    pub to_k: Linear<B>,
    /// Value projection (with bias).
    pub to_v: Linear<B>,
    /// Output projection (`to_out.0`).
    pub to_out: Vec<Linear<B>>,
}

impl<B: Backend> VaeAttention<B> {
    /// A VAE attention block over `channels` channels (one head of width `channels`).
    pub fn new(channels: usize, norm_groups: usize, device: &B::Device) -> Self {
        let linear = || LinearConfig::new(channels, channels).init(device);
        Self {
            group_norm: GroupNormConfig::new(norm_groups, channels)
                .with_epsilon(1e-6)
                .init(device),
            to_q: linear(),
            to_k: linear(),
            to_v: linear(),
            to_out: vec![linear()],
        }
    }

    /// `x + attention(group_norm(x))` on `[b, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, channels, height, width] = x.dims();
        let hidden = super::fused::group_norm(&self.group_norm, x.clone(), false)
            .reshape([batch, channels, height * width])
            .swap_dims(1, 2);
        let query = self.to_q.forward(hidden.clone());
        let key = self.to_k.forward(hidden.clone());
        let value = self.to_v.forward(hidden);
        let out = self.to_out[0].forward(multi_head_attention(query, key, value, 1, false));
        let out = out
            .swap_dims(1, 2)
            .reshape([batch, channels, height, width]);
        out + x
    }
}
