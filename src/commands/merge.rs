//! `stylus merge`: bake weighted LoRAs into a checkpoint.

use std::path::PathBuf;

use stylus_core::{StylusConfig, StylusError};
use stylus_diffusion::lora::AdapterStrength;
use stylus_diffusion::lora::bake::merge_into_checkpoint;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base checkpoint: a diffusers folder or a single-file .safetensors.
    #[arg(long, value_name = "PATH")]
    pub base: PathBuf,
    /// A LoRA to merge, `FILE[:WEIGHT]` (repeatable; weight defaults to 1).
    #[arg(long, value_name = "FILE[:W]", required = true)]
    pub lora: Vec<String>,
    /// Text-encoder multiplier (default: the same as each LoRA's weight).
    #[arg(long)]
    pub te_weight: Option<f32>,
    /// Output, in the same layout as the base (a folder or one .safetensors).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Replace `--out` when it already exists (by default an existing file or folder is never
    /// overwritten).
    #[arg(long)]
    pub force: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args, _config: &StylusConfig) -> Result<(), StylusError> {
    if let Some(weight) = args.te_weight {
        stylus_core::in_range("--te-weight", weight, &stylus_core::limits::LORA_WEIGHT)?;
    }
    let adapters = args
        .lora
        .iter()
        .map(|spec| {
            let (path, weight) = super::parse_lora_spec(spec)?;
            Ok(AdapterStrength {
                path,
                unet: weight,
                text_encoder: args.te_weight.unwrap_or(weight),
            })
        })
        .collect::<Result<Vec<_>, StylusError>>()?;
    // Checked after the inputs, before any work: an unrelated file is never overwritten.
    super::refuse_overwrite(&args.out, "--out", args.force)?;
    let report = merge_into_checkpoint(&args.base, &adapters, &args.out)?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| StylusError::InvalidArgument(format!("report: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    println!("base: {} ({})", args.base.display(), report.layout);
    for (stats, strength) in report.adapters.iter().zip(&adapters) {
        println!(
            "  {} [{}] unet x{} text encoder x{}: {} modules merged{}",
            stats.path.display(),
            stats.format,
            strength.unet,
            strength.text_encoder,
            stats.matched_modules,
            if stats.unmatched_modules.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} unmatched (e.g. {})",
                    stats.unmatched_modules.len(),
                    stats.unmatched_modules[0]
                )
            }
        );
    }
    println!(
        "{} tensors changed in {:.0} ms",
        report.merged_tensors, report.millis
    );
    for file in &report.files_written {
        println!("wrote {}", file.display());
    }
    Ok(())
}
