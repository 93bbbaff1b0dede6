//! The one normalized form every adapter file is parsed into: per target module, the adapter
//! kind with its factors in f32 (PyTorch layout), the alpha, the rank and the modifiers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::targets::Network;

/// A dense f32 tensor in PyTorch layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Factor {
    /// Shape as stored in the file.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

impl Factor {
    /// First dimension (1 for a 0-dim tensor).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Product of the remaining dimensions: the columns of the factor viewed as a matrix.
    pub fn cols(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.values.len()
    }
}

/// One factor of a LoKr Kronecker product: stored whole, or as a low-rank product
/// `a @ b` (optionally with a Tucker core `tucker`, then `a`/`b` are `[r, rows]`/`[r, cols]`).
#[derive(Debug, Clone, PartialEq)]
pub enum KronFactor {
    /// `lokr_w1` / `lokr_w2`.
    Whole(Factor),
    /// `lokr_wN_a`, `lokr_wN_b` (and `lokr_tN`).
    Decomposed {
        /// `[rows, r]`, or `[r, rows]` with a Tucker core.
        a: Factor,
        /// `[r, cols]`, or `[r, in]` with a Tucker core.
        b: Factor,
        /// `[r, r, kh, kw]`.
        tucker: Option<Factor>,
    },
}

/// The adapter algorithm of one module and its factors.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterKind {
    /// kohya LoRA / LoCon, PEFT and diffusers LoRA: `up @ down`, or the Tucker form with `mid`.
    Lora {
        /// `[out, r(, 1, 1)]`.
        up: Factor,
        /// `[r, in(, kh, kw)]`, or `[r, in, 1, 1]` with `mid`.
        down: Factor,
        /// `[r, r, kh, kw]` (LoCon CP decomposition).
        mid: Option<Factor>,
    },
    /// LyCORIS LoHa: `(w1_a @ w1_b) ⊙ (w2_a @ w2_b)`, or the Tucker form with `t1`/`t2`.
    Loha {
        /// `[out, r]`, or `[r, out]` with Tucker.
        w1_a: Factor,
        /// `[r, in*kh*kw]`, or `[r, in]` with Tucker.
        w1_b: Factor,
        /// Like `w1_a`.
        w2_a: Factor,
        /// Like `w1_b`.
        w2_b: Factor,
        /// Tucker cores `[r, r, kh, kw]` (both or neither).
        tucker: Option<(Factor, Factor)>,
    },
    /// LyCORIS LoKr: `kron(w1, w2)` reshaped to the weight.
    Lokr {
        /// The small factor.
        w1: KronFactor,
        /// The large factor.
        w2: KronFactor,
    },
    /// Full weight difference (`diff`, optional bias `diff_b`).
    Full {
        /// Same shape as the weight.
        diff: Factor,
        /// `[out]`.
        diff_b: Option<Factor>,
    },
    /// (IA)^3: `W ⊙ w` per output row, or per input column when `on_input`.
    Ia3 {
        /// `[out]` or `[in]`.
        weight: Factor,
        /// Scale input columns instead of output rows.
        on_input: bool,
    },
}

impl AdapterKind {
    /// Short algorithm name: `lora`, `loha`, `lokr`, `full`, `ia3`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Lora { .. } => "lora",
            Self::Loha { .. } => "loha",
            Self::Lokr { .. } => "lokr",
            Self::Full { .. } => "full",
            Self::Ia3 { .. } => "ia3",
        }
    }
}

/// Which weight axis DoRA normalizes (decided by the shape of `dora_scale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum DoraAxis {
    /// `dora_scale` is `[out, 1, ...]`: one norm per output row (LyCORIS `wd_on_out`, PEFT).
    Output,
    /// `dora_scale` is `[1, in, ...]`: one norm per input channel, over outputs and kernel
    /// (older LyCORIS, A1111).
    Input,
}

/// DoRA magnitude of a module.
#[derive(Debug, Clone, PartialEq)]
pub struct Dora {
    /// The magnitudes, one per row or per input channel.
    pub scale: Vec<f32>,
    /// The normalized axis.
    pub axis: DoraAxis,
}

/// One adapted module, resolved to a model target.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterModule {
    /// The module's name in the file (the key without its suffix).
    pub name: String,
    /// Index of the target in the [`super::TargetTable`].
    pub target: usize,
    /// Network of the target.
    pub network: Network,
    /// Algorithm and factors.
    pub kind: AdapterKind,
    /// The rank that divides alpha, when the algorithm has one.
    pub rank: Option<usize>,
    /// Alpha as stored (`None`: absent or 0, which means alpha = rank).
    pub alpha: Option<f32>,
    /// The multiplier of the module's delta before the user strength: `alpha / rank`, 1 without
    /// alpha, the A1111 `scale` tensor when present.
    pub scale: f32,
    /// DoRA magnitude, when the module is weight-decomposed.
    pub dora: Option<Dora>,
}

/// A parsed adapter file.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// The file.
    pub path: PathBuf,
    /// Detected format (`kohya_lora`, `kohya_locon`, `lycoris_lokr`, `peft`, `diffusers`, ...).
    pub format: String,
    /// The modules that resolved to a target, in file order of their names.
    pub modules: Vec<AdapterModule>,
    /// Module names that match nothing in the model.
    pub unmatched: Vec<String>,
    /// Keys of resolved modules with a suffix we do not know (warned about, not applied).
    pub unknown_keys: Vec<String>,
    /// Keys deliberately skipped (embedded textual inversions `bundle_emb.*`).
    pub ignored: Vec<String>,
    /// The safetensors `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// sha256 of the tensor data (kohya `sshs_model_hash`).
    pub content_hash: String,
}

impl LoraAdapter {
    /// Number of modules per network.
    pub fn count(&self, network: Network) -> usize {
        self.modules.iter().filter(|m| m.network == network).count()
    }
}
