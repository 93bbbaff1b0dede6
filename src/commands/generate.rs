//! `stylus generate`: select + merge + SD 1.5 sampling -> PNGs.

use std::path::PathBuf;

use stylus_core::{StylusConfig, StylusError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// SD 1.5 checkpoint: a diffusers folder or a single-file .safetensors.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// StylusDocs store directory (default: the bundled catalog).
    #[arg(long, value_name = "DIR")]
    pub index: Option<PathBuf>,
    /// Folder with the LoRA files of the selected adapters.
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// An explicit LoRA, `FILE[:WEIGHT]` (repeatable); disables selection unless --select.
    #[arg(long, value_name = "FILE[:W]")]
    pub lora: Vec<String>,
    /// Skip adapter selection.
    #[arg(long)]
    pub no_select: bool,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub cfg: Option<f32>,
    /// ddim, euler, euler_ancestral, dpmpp_2m, dpmpp_2m_karras.
    #[arg(long)]
    pub sampler: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Initial latents: safetensors with one tensor `latents` [batch, 4, h/8, w/8].
    #[arg(long, value_name = "FILE")]
    pub latents: Option<PathBuf>,
    /// Save the final denoised latents (before VAE decoding), same format.
    #[arg(long, value_name = "FILE")]
    pub save_latents: Option<PathBuf>,
    /// cpu, wgpu or cuda (GPU ones need the matching build feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output directory for NNNN.png and plan.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The prompt.
    pub prompt: String,
}

pub fn run(_args: Args, _config: &StylusConfig) -> Result<(), StylusError> {
    super::not_implemented("stylus generate")
}
